import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, type ClientStatus } from "../../src/index.js";
import { StatusQueue } from "../../src/status.js";
import { FakeBroker } from "./fake.js";

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("a consumer that does not read keeps at most `max` events: the oldest are dropped, and then said so", async () => {
  let detached = 0;
  const q = new StatusQueue<{ type: "n"; n: number }>(10, () => detached++);
  for (let n = 1; n <= 1000; n++) q.push({ type: "n", n });
  assert.equal(q.size, 10);
  const first = await q.next();
  assert.deepEqual(first, { done: false, value: { type: "dropped", count: 990 } });
  const rest: number[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await q.next();
    assert.ok(!r.done && r.value.type === "n");
    rest.push(r.value.n);
  }
  assert.deepEqual(rest, [991, 992, 993, 994, 995, 996, 997, 998, 999, 1000]);
  q.end();
  assert.deepEqual(await q.next(), { done: true, value: undefined });
  assert.equal(detached, 0, "ended by the producer, not detached");
});

test("a waiting consumer gets each event as it comes; after end() it gets what is held, then the end", async () => {
  const q = new StatusQueue<string>(4, () => undefined);
  const pending = q.next();
  q.push("a");
  assert.deepEqual(await pending, { done: false, value: "a" });
  q.push("b");
  q.end();
  q.push("c"); // after the end: ignored
  assert.deepEqual(await q.next(), { done: false, value: "b" });
  assert.deepEqual(await q.next(), { done: true, value: undefined });
  const waiting = new StatusQueue<string>(4, () => undefined);
  const w = waiting.next();
  waiting.end();
  assert.deepEqual(await w, { done: true, value: undefined });
});

test("return() (a break out of for await) detaches the queue once and drops what it held", async () => {
  let detached = 0;
  const q = new StatusQueue<string>(4, () => detached++);
  q.push("a");
  q.push("b");
  for await (const s of q) {
    assert.equal(s, "a");
    break;
  }
  assert.equal(detached, 1);
  assert.equal(q.size, 0);
  q.push("c");
  assert.deepEqual(await q.next(), { done: true, value: undefined });
  await q.return();
  assert.equal(detached, 1);
});

test("client.status(): disconnect, reconnecting, connect, recovered, then close, and the iterator ends", async (t) => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "sam", reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
  t.after(() => client.close());
  await client.join("general");
  const seen: ClientStatus[] = [];
  const done = (async () => {
    for await (const s of client.status()) seen.push(s);
  })();
  broker.dropAll();
  await new Promise<void>((r) => client.once("recovered", () => r()));
  client.close();
  await Promise.race([done, wait(2000).then(() => assert.fail("the status iterator did not end when the client closed"))]);
  const types = seen.map((s) => s.type);
  assert.deepEqual(types, ["disconnect", "reconnecting", "connect", "recovered", "close"]);
  const [disconnect, reconnecting, connected, recovered, close] = seen;
  assert.ok(disconnect?.type === "disconnect" && disconnect.willReconnect && disconnect.closeCode === 1006);
  assert.ok(reconnecting?.type === "reconnecting" && reconnecting.attempt === 1 && !reconnecting.initial && reconnecting.delayMs < 5);
  assert.ok(connected?.type === "connect" && connected.reconnected);
  assert.ok(recovered?.type === "recovered");
  assert.deepEqual(recovered.resumed.map((r) => r.room), ["general"]);
  assert.ok(close?.type === "close" && close.reason === "closed by the client");
});

test("client.status() with a slow consumer: bounded, the oldest dropped, the close kept", async (t) => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 2 } });
  t.after(() => client.close());
  const status = client.status({ max: 3 });
  // Ten losses and reconnects, each three or four events, nobody reading.
  for (let i = 0; i < 10; i++) {
    const back = new Promise<void>((r) => client.once("connect", () => r()));
    broker.dropAll();
    await back;
  }
  client.close();
  const got: ClientStatus[] = [];
  for await (const s of status) got.push(s);
  assert.equal(got.length, 4, `a dropped notice and the three newest: ${JSON.stringify(got.map((s) => s.type))}`);
  assert.ok(got[0]?.type === "dropped" && got[0].count >= 27);
  assert.equal(got.at(-1)?.type, "close");
  // An iterator made after the close ends at once.
  assert.deepEqual(await client.status().next(), { done: true, value: undefined });
});
