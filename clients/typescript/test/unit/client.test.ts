import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, ClosedError, OfflineQueueFullError, type RecoveredInfo } from "../../src/index.js";
import { FakeBroker } from "./fake.js";

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

function once<T>(emitter: { once(event: never, fn: (arg: T) => void): unknown }, event: string): Promise<T> {
  return new Promise((resolve) => (emitter.once as (e: string, fn: (arg: T) => void) => unknown)(event, resolve));
}

test("an unconfirmed publish is re-sent after a reconnect with its original dedup id, after the rooms are joined again", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "alice", reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
  await client.join("general");
  broker.holdPublishes = true;
  const pending = client.publish("general", "chat message", "hello");
  await wait(20);
  const firstSend = broker.frames[0]?.find((f) => f.body.case === "publish");
  assert.ok(firstSend && firstSend.body.case === "publish");
  const dedup = Buffer.from(firstSend.body.value.dedupId).toString("hex");

  const recovered = once<RecoveredInfo>(client, "recovered");
  broker.holdPublishes = false;
  broker.dropAll();
  const info = await recovered;
  const result = await pending;
  assert.equal(result.seq, 1);
  assert.equal(info.resent, 1);
  assert.deepEqual(info.resumed.map((r) => r.room), ["general"]);

  const second = broker.frames[1] ?? [];
  const order = second.map((f) => f.body.case);
  assert.deepEqual(order.slice(0, 3), ["handshake", "join", "publish"], "resume before re-send");
  const resent = second.find((f) => f.body.case === "publish");
  assert.ok(resent && resent.body.case === "publish");
  assert.equal(Buffer.from(resent.body.value.dedupId).toString("hex"), dedup, "same dedup id");
  client.close();
});

test("a publish stored before the loss gets its original seq back (duplicate), not a second copy", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
  const first = await client.publish("r", "e", "one");
  assert.equal(first.seq, 1);
  // Simulate: stored, then the connection died before the reply reached us.
  broker.holdPublishes = true;
  const p = client.publish("r", "e", "two");
  await wait(10);
  const sent = broker.frames[0]?.filter((f) => f.body.case === "publish").at(-1);
  assert.ok(sent && sent.body.case === "publish");
  broker.holdPublishes = false;
  // Store it now (as if the broker had written it), by replaying the frame on a side channel.
  const side = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  const stored = await side.publish("r", "e", "two", { dedupId: sent.body.value.dedupId });
  side.close();
  broker.dropAll();
  const result = await p;
  assert.equal(result.seq, stored.seq);
  assert.equal(result.duplicate, true);
  client.close();
});

test("events: disconnect, reconnecting with full-jitter delays, connect, recovered", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 40 } });
  const seen: string[] = [];
  const delays: number[] = [];
  client.on("disconnect", (d) => seen.push(`disconnect:${d.willReconnect}`));
  client.on("reconnecting", (r) => {
    seen.push(`reconnecting:${r.attempt}`);
    delays.push(r.delayMs);
  });
  client.on("connect", (c) => seen.push(`connect:${c.reconnected}`));
  broker.down = true;
  broker.dropAll();
  await wait(150);
  assert.equal(client.state, "reconnecting");
  const recovered = once<RecoveredInfo>(client, "recovered");
  broker.down = false;
  await recovered;
  assert.equal(seen[0], "disconnect:true");
  assert.equal(seen[1], "reconnecting:1");
  assert.equal(seen.at(-1), "connect:true");
  assert.ok(delays.every((d, i) => d >= 0 && d < Math.min(40, 10 * 2 ** i)), `delays ${delays} within their caps`);
  client.close();
});

test("offline queue: bounded, with reject-new", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, reconnect: { initialDelayMs: 1000 }, offlineQueue: { max: 2 } });
  broker.dropAll();
  await wait(10);
  const a = client.publish("r", "e", "a");
  const b = client.publish("r", "e", "b");
  await assert.rejects(client.publish("r", "e", "c"), OfflineQueueFullError);
  await assert.rejects(client.publish("r", "e", "v", { volatile: true }), /not connected/);
  client.close();
  await assert.rejects(a, ClosedError);
  await assert.rejects(b, ClosedError);
});

test("close: pending operations fail, no reconnect", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  broker.holdPublishes = true;
  const p = client.publish("r", "e", "x");
  const closed = once<{ reason: string }>(client, "close");
  client.close();
  await assert.rejects(p, ClosedError);
  assert.equal((await closed).reason, "closed by the client");
  assert.equal(client.state, "closed");
  await assert.rejects(client.join("r"), ClosedError);
});

test("to(...).except(...).emit(...) publishes to the room, except the sender and the except rooms", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  const r = await client.to("general").except("muted").emit("chat message", "hi");
  assert.equal(r.seq, 1);
  const f = broker.frames[0]?.find((x) => x.body.case === "publish");
  assert.ok(f && f.body.case === "publish");
  assert.deepEqual(f.body.value.rooms, ["general"]);
  assert.deepEqual(f.body.value.exceptRooms, ["muted"]);
  assert.equal(f.body.value.exceptSelf, true);
  await client.to("general").volatile.emit("typing", "");
  const v = broker.frames[0]?.filter((x) => x.body.case === "publish").at(-1);
  assert.ok(v && v.body.case === "publish" && v.body.value.volatile && v.body.value.dedupId.length === 0);
  client.close();
});

test("a dead link is detected by ping timeout", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, pingIntervalMs: 20, pingTimeoutMs: 30, reconnect: false });
  // Stop answering anything (a half-open link).
  broker.holdPublishes = true;
  const original = broker.handle.bind(broker);
  broker.handle = () => undefined;
  const d = await once<{ reason: string }>(client, "disconnect");
  assert.match(d.reason, /no reply to a ping/);
  broker.handle = original;
  assert.equal(client.state, "closed");
});
