import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";
import { ConnectionLostError, connect, createClient, textCodec, type Client, type ClientStatus, type WebSocketConstructor } from "../../src/index.js";
import { Broker, until } from "./broker.js";

const WS = WebSocket as unknown as WebSocketConstructor;
const clients: Client<string>[] = [];
const brokers: Broker[] = [];
after(async () => {
  for (const c of clients) c.close();
  for (const b of brokers) await b.stop();
});

test("a client started before the broker listens connects once the broker is up", async () => {
  const broker = await Broker.prepare();
  brokers.push(broker);
  const client = createClient(broker.url, { WebSocket: WS, clientId: "early-bird", codec: textCodec, reconnect: { initialDelayMs: 50, maxDelayMs: 200 } });
  clients.push(client);
  const seen: ClientStatus[] = [];
  void (async () => {
    for await (const s of client.status()) seen.push(s);
  })();
  // Nothing listens yet: the first attempts fail and are retried.
  await until(() => seen.filter((s) => s.type === "reconnecting").length >= 2, 5000, "retries of the first connection");
  assert.equal(client.state, "connecting");
  const joining = client.join("early-room");
  await broker.launch();
  await client.ready();
  assert.equal(client.state, "connected");
  const room = await joining;
  const got: string[] = [];
  room.on("hello", (text) => void got.push(text));
  await client.publish("early-room", "hello", "made it");
  await until(() => got.length === 1, 5000, "the message");
  assert.deepEqual(got, ["made it"]);
  const retries = seen.filter((s) => s.type === "reconnecting");
  assert.ok(retries.every((s) => s.type === "reconnecting" && s.initial && s.error instanceof ConnectionLostError));
  assert.ok(seen.some((s) => s.type === "connect" && !s.reconnected));
});

test("firstConnect bounds the attempts at a broker that is not there: connect() rejects", async () => {
  const broker = await Broker.prepare(); // never launched
  brokers.push(broker);
  const started = Date.now();
  await assert.rejects(connect(broker.url, { WebSocket: WS, reconnect: { initialDelayMs: 20, maxDelayMs: 40 }, firstConnect: { maxAttempts: 3 } }), ConnectionLostError);
  await assert.rejects(connect(broker.url, { WebSocket: WS, reconnect: { initialDelayMs: 20, maxDelayMs: 40 }, firstConnect: { deadlineMs: 300 } }), ConnectionLostError);
  assert.ok(Date.now() - started < 5000);
});
