import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { textCodec, type Delivery } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("nack with a delay brings the message back later, attempt 2, redelivered", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "dl-nack", codec: textCodec });
  const room = await c.join("dl-nack");
  const got: Array<{ seq: number; attempt: number; at: number }> = [];
  room.on("e", async (_t, d) => {
    got.push({ seq: d.seq, attempt: d.attempt, at: Date.now() });
    if (d.attempt === 1) await d.nack(300);
    else await d.ack();
  });
  await pub.publish("dl-nack", "e", "x");
  await until(() => got.length === 2, 5000, "the redelivery");
  assert.deepEqual(
    got.map((g) => [g.seq, g.attempt]),
    [
      [1, 1],
      [1, 2],
    ],
  );
  assert.ok((got[1]?.at ?? 0) - (got[0]?.at ?? 0) >= 250, "after the delay");
});

test("a delivery held past maxHoldMs is released and redelivered after its ack timeout", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "dl-hold", codec: textCodec, maxHoldMs: 100 });
  const room = await c.join("dl-hold", { ackTimeoutMs: 300 });
  const got: Delivery<string>[] = [];
  room.on("e", (_t, d) => void got.push(d));
  await pub.publish("dl-hold", "e", "x");
  await until(() => got.length === 2, 5000, "the redelivery after the ack timeout");
  assert.equal(got[1]?.attempt, 2);
  assert.equal(got[1]?.redelivered, true);
  await got[1]?.ack();
});

test("event filter, start at a seq and at a time", async () => {
  const pub = await broker.client({ codec: textCodec });
  for (const e of ["order.created", "refund", "order.paid", "other"]) await pub.publish("dl-events", e, e);
  const c = await broker.client({ codec: textCodec });
  const filtered = await c.join("dl-events", { start: "earliest", events: ["order.*"], autoAck: true });
  const events: string[] = [];
  filtered.onAny((event) => void events.push(event));
  await until(() => events.length === 2);
  await wait(100);
  assert.deepEqual(events, ["order.created", "order.paid"]);

  const fromSeq = await c.join("dl-events", { subscription: "from-3", start: { seq: 3 }, autoAck: true });
  const seqs: number[] = [];
  fromSeq.onAny((_e, _t, d) => void seqs.push(d.seq));
  await until(() => seqs.length === 2);
  assert.deepEqual(seqs, [3, 4]);

  const before = Date.now();
  await wait(20);
  await pub.publish("dl-events", "late", "late");
  const fromTime = await c.join("dl-events", { subscription: "from-time", start: { time: before + 10 }, autoAck: true });
  const late: string[] = [];
  fromTime.onAny((e) => void late.push(e));
  await until(() => late.length === 1);
  assert.deepEqual(late, ["late"]);
});

test("maxDeliveries: a message never acknowledged goes to <room>.dlq", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "dl-dead", codec: textCodec });
  const room = await c.join("dl-dead", { maxDeliveries: 2 });
  let attempts = 0;
  room.on("e", async (_t, d) => {
    attempts++;
    await d.nack(0, "cannot handle it");
  });
  await pub.publish("dl-dead", "e", "poison");
  const dlq = await c.join("dl-dead.dlq", { start: "earliest", autoAck: true });
  const dead: Delivery<string>[] = [];
  dlq.on("e", (_t, d) => void dead.push(d));
  await until(() => dead.length === 1, 5000, "the dead letter");
  assert.equal(attempts, 2);
  assert.equal(dead[0]?.data, "poison");
  assert.equal(dead[0]?.headers["roomq-dead-reason"], "cannot handle it");
  assert.equal(dead[0]?.headers["roomq-dead-room"], "dl-dead");
});
