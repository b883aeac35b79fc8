import assert from "node:assert/strict";
import { test } from "node:test";
import { BrokerError, connect, jsonCodec, textCodec, type Delivery, type GapNotice, type PresenceChange } from "../../src/index.js";
import { FakeBroker } from "./fake.js";

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("handlers get decoded data; acks are coalesced into one cumulative Ack", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob", codec: textCodec });
  const room = await client.join("general");
  const got: string[] = [];
  const acks: Promise<void>[] = [];
  room.on("chat message", (data, d) => {
    got.push(`${d.seq}:${data}`);
    acks.push(d.ack());
  });
  for (let s = 1; s <= 5; s++) broker.push("general", "", s, "chat message", `m${s}`);
  await wait(30);
  await Promise.all(acks);
  assert.deepEqual(got, ["1:m1", "2:m2", "3:m3", "4:m4", "5:m5"]);
  const ackFrames = (broker.frames[0] ?? []).filter((f) => f.body.case === "ack");
  assert.equal(ackFrames.length, 1, "one frame for five acks");
  const ack = ackFrames[0];
  assert.ok(ack && ack.body.case === "ack");
  assert.equal(ack.body.value.upTo, 5n);
  assert.deepEqual(ack.body.value.seqs, []);
  client.close();
});

test("ordered mode: duplicates and stale redeliveries are not handed over; acked ones are acked again", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob", codec: textCodec });
  const room = await client.join("general");
  const seqs: number[] = [];
  const held: Delivery<string>[] = [];
  room.onAny((_e, _data, d) => {
    seqs.push(d.seq);
    held.push(d);
  });
  broker.push("general", "", 1, "e", "a");
  broker.push("general", "", 2, "e", "b");
  broker.push("general", "", 1, "e", "a", 2); // redelivery of a held one
  await wait(20);
  await held[0]?.ack();
  broker.push("general", "", 1, "e", "a", 3); // redelivery of an acked one
  await wait(20);
  assert.deepEqual(seqs, [1, 2]);
  const acks = (broker.frames[0] ?? []).filter((f) => f.body.case === "ack");
  assert.equal(acks.length, 2, "the acked redelivery was acknowledged again");
  client.close();
});

test("a seq held by the application blocks the cumulative ack; later acks are listed", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob" });
  const room = await client.join("r");
  const ds: Delivery<Uint8Array | string>[] = [];
  room.onAny((_e, _d, d) => void ds.push(d));
  for (let s = 1; s <= 4; s++) broker.push("r", "", s, "e", "x");
  await wait(20);
  // Ack 1, 3, 4 but hold 2.
  await Promise.all([ds[0]?.ack(), ds[2]?.ack(), ds[3]?.ack()]);
  const ack = (broker.frames[0] ?? []).filter((f) => f.body.case === "ack").at(-1);
  assert.ok(ack && ack.body.case === "ack");
  assert.equal(ack.body.value.upTo, 0n, "1 alone is not worth an up_to");
  assert.deepEqual(ack.body.value.seqs, [1n, 3n, 4n]);
  client.close();
});

test("for await gets what no handler takes; auto-ack acknowledges on take", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob", codec: jsonCodec<{ n: number }>() });
  const room = await client.join("r", { autoAck: true });
  const handled: number[] = [];
  room.on("handled", (data) => void handled.push(data.n));
  broker.push("r", "", 1, "handled", '{"n":1}');
  broker.push("r", "", 2, "other", '{"n":2}');
  broker.push("r", "", 3, "other", '{"n":3}');
  const it = room[Symbol.asyncIterator]();
  const a = await it.next();
  const b = await it.next();
  assert.deepEqual([a.value?.data.n, b.value?.data.n], [2, 3]);
  await wait(20);
  assert.deepEqual(handled, [1]);
  const acked = (broker.frames[0] ?? []).filter((f) => f.body.case === "ack");
  assert.ok(acked.length >= 1);
  await room.leave();
  assert.equal((await it.next()).done, true, "the iterator ends when the room is left");
  client.close();
});

test("gap and presence pushes reach the room's listeners", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob" });
  const room = await client.join("r", { presence: true });
  const gaps: GapNotice[] = [];
  const presence: PresenceChange[] = [];
  room.on("gap", (g) => void gaps.push(g));
  room.on("presence", (p) => void presence.push(p));
  broker.pushFrame({ requestId: 0n, body: { case: "gap", value: { room: "r", subscription: "", fromSeq: 1n, toSeq: 4n, missed: 4n } } });
  broker.pushFrame({ requestId: 0n, body: { case: "presence", value: { room: "r", subscription: "", kind: 1, member: { sessionId: new Uint8Array(16).fill(0xab), clientName: "carol" } } } });
  await wait(20);
  assert.deepEqual(gaps, [{ room: "r", subscription: "", fromSeq: 1, toSeq: 4, missed: 4 }]);
  assert.equal(presence[0]?.kind, "joined");
  assert.equal(presence[0]?.member.clientName, "carol");
  assert.equal(presence[0]?.member.sessionId, "abababab-abab-abab-abab-abababababab");
  // After the gap, a redelivery of 3 is stale: acked again, not handed.
  const seen: number[] = [];
  room.onAny((_e, _d, d) => void seen.push(d.seq));
  broker.push("r", "", 3, "e", "x");
  broker.push("r", "", 5, "e", "y");
  await wait(20);
  assert.deepEqual(seen, [5]);
  client.close();
});

test("a handler that throws with auto-ack gives the delivery back (nack)", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob" });
  const room = await client.join("r", { autoAck: true });
  const errors: string[] = [];
  room.on("error", (e) => void errors.push(e.message));
  room.on("e", () => {
    throw new Error("boom");
  });
  broker.push("r", "", 1, "e", "x");
  await wait(20);
  assert.equal(errors.length, 1);
  assert.match(errors[0] ?? "", /boom/);
  const nacks = (broker.frames[0] ?? []).filter((f) => f.body.case === "nack");
  assert.equal(nacks.length, 1);
  client.close();
});

test("a refused ack does not reject: the room's error listeners hear of it", async () => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "bob" });
  const room = await client.join("r");
  const errors: string[] = [];
  room.on("error", (e) => void errors.push(e instanceof BrokerError ? e.codeName : e.message));
  const ds: Delivery<Uint8Array | string>[] = [];
  room.onAny((_e, _d, d) => void ds.push(d));
  broker.refuseAcks = true;
  broker.push("r", "", 1, "e", "x");
  await wait(20);
  await ds[0]?.ack(); // resolves
  assert.deepEqual(errors, ["NOT_JOINED"]);
  assert.equal(room.refusedAcks, 1);
  client.close();
});
