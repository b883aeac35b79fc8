import assert from "node:assert/strict";
import { test } from "node:test";
import { BrokerError, ConnectionLostError, connect, createClient, type ClientStatus, type WebSocketConstructor } from "../../src/index.js";
import { FakeBroker } from "./fake.js";

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("the first connection is retried with the reconnect backoff until the broker is there", async (t) => {
  const broker = new FakeBroker();
  broker.down = true;
  const client = createClient("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 40 } });
  t.after(() => client.close());
  const seen: ClientStatus[] = [];
  void (async () => {
    for await (const s of client.status()) seen.push(s);
  })();
  assert.equal(client.state, "connecting");
  for (let waited = 0; broker.refused < 2 && waited < 5000; waited += 10) await wait(10);
  assert.ok(broker.refused >= 2, `attempts so far: ${broker.refused}`);
  assert.equal(client.state, "connecting");
  broker.down = false;
  await client.ready();
  assert.equal(client.state, "connected");
  await wait(5); // the status loop takes the last event
  const retries = seen.filter((s) => s.type === "reconnecting");
  assert.ok(retries.length >= 2);
  retries.forEach((r, i) => {
    assert.ok(r.type === "reconnecting" && r.initial && r.attempt === i + 1, JSON.stringify(r));
    assert.ok(r.delayMs >= 0 && r.delayMs < Math.min(40, 10 * 2 ** i), `delay ${r.delayMs} within its cap`);
    assert.ok(r.error instanceof ConnectionLostError, "says why the attempt failed");
  });
  const last = seen.at(-1);
  assert.ok(last?.type === "connect" && !last.reconnected);
  assert.equal((await client.publish("r", "e", "x")).seq, 1);
  client.close();
});

test("connect() resolves once the broker comes up, and a publish made while connecting waits for it", async (t) => {
  const broker = new FakeBroker();
  broker.down = true;
  const client = createClient("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 10 } });
  t.after(() => client.close());
  const published = client.publish("r", "e", "early");
  setTimeout(() => (broker.down = false), 50);
  await client.ready();
  assert.equal((await published).seq, 1);
  const again = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  t.after(() => again.close());
  again.close();
  client.close();
});

test("firstConnect.maxAttempts bounds the attempts: connect() rejects with the last attempt's error and the client is closed", async (t) => {
  const broker = new FakeBroker();
  broker.down = true;
  const closed: string[] = [];
  const p = connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 10 }, firstConnect: { maxAttempts: 3 } });
  await assert.rejects(p, ConnectionLostError);
  assert.equal(broker.refused, 3);
  const c = createClient("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 5 }, firstConnect: { maxAttempts: 2 } });
  t.after(() => c.close());
  c.on("close", ({ reason }) => closed.push(reason));
  await assert.rejects(c.ready(), ConnectionLostError);
  assert.equal(c.state, "closed");
  assert.match(closed[0] ?? "", /gave up connecting after 2 attempts/);
});

test("firstConnect.deadlineMs bounds the time; firstConnect: false and reconnect: false make one attempt", async () => {
  const broker = new FakeBroker();
  broker.down = true;
  const started = Date.now();
  await assert.rejects(connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 20 }, firstConnect: { deadlineMs: 150 } }), ConnectionLostError);
  const took = Date.now() - started;
  assert.ok(took < 2000, `gave up after ${took} ms`);
  assert.ok(broker.refused >= 2, `retried before the deadline: ${broker.refused} attempts`);
  broker.refused = 0;
  await assert.rejects(connect("ws://fake/ws", { WebSocket: broker.WebSocket, firstConnect: false }), ConnectionLostError);
  assert.equal(broker.refused, 1);
  await assert.rejects(connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: false }), ConnectionLostError);
  assert.equal(broker.refused, 2);
});

test("a refusal that retrying cannot fix fails the first connect at once; so does a URL the WebSocket class refuses", async (t) => {
  const broker = new FakeBroker();
  const original = broker.handle.bind(broker);
  let handshakes = 0;
  broker.handle = (s, conn, f) => {
    if (f.body.case === "handshake") {
      handshakes++;
      s.deliver({ requestId: 0n, body: { case: "error", value: { code: 17, name: "UNAUTHENTICATED", message: "no token", fatal: true } } });
      return;
    }
    original(s, conn, f);
  };
  const e = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 1 } }).then(
    () => assert.fail("connected"),
    (err: unknown) => err,
  );
  assert.ok(e instanceof BrokerError && e.codeName === "UNAUTHENTICATED");
  assert.equal(handshakes, 1, "not retried");
  const Throwing = class {
    constructor() {
      throw new SyntaxError("bad url");
    }
  } as unknown as WebSocketConstructor;
  const c = createClient("nonsense", { WebSocket: Throwing, reconnect: { initialDelayMs: 1 } });
  t.after(() => c.close());
  await assert.rejects(c.ready(), /bad url/);
  assert.equal(c.state, "closed");
});

test("close() while the first connection is tried rejects ready() with ClosedError and stops trying", async (t) => {
  const broker = new FakeBroker();
  broker.down = true;
  const c = createClient("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 5 } });
  t.after(() => c.close());
  await wait(30);
  c.close();
  await assert.rejects(c.ready(), /closed/);
  const attempts = broker.attempts;
  await wait(50);
  assert.equal(broker.attempts, attempts, "no attempt started after close");
});
