import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { textCodec, type Delivery, type RecoveredInfo } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("a durable member that was away gets what it missed, in order, once (new client, same client id)", async () => {
  const pub = await broker.client({ codec: textCodec });
  const first = await broker.client({ clientId: "resume-dana", codec: textCodec });
  const r1 = await first.join("resume-general");
  const got1: string[] = [];
  r1.on("chat message", async (t, d) => {
    got1.push(t);
    await d.ack();
  });
  await pub.publish("resume-general", "chat message", "a");
  await until(() => got1.length === 1);
  await wait(50); // let the ack be confirmed
  first.close(); // the tab closes
  for (const t of ["b", "c", "d"]) await pub.publish("resume-general", "chat message", t);
  const second = await broker.client({ clientId: "resume-dana", codec: textCodec });
  const r2 = await second.join("resume-general");
  const got2: Array<[string, number]> = [];
  r2.on("chat message", async (t, d) => {
    got2.push([t, d.seq]);
    await d.ack();
  });
  await until(() => got2.length === 3);
  await wait(200);
  assert.deepEqual(got2, [
    ["b", 2],
    ["c", 3],
    ["d", 4],
  ]);
});

test("after a broker crash the client reconnects, resumes its rooms, and misses nothing", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "resume-erin", codec: textCodec });
  const room = await c.join("resume-crash");
  const got: number[] = [];
  room.on("e", async (_t, d) => {
    got.push(d.seq);
    await d.ack();
  });
  for (let i = 1; i <= 5; i++) await pub.publish("resume-crash", "e", `m${i}`);
  await until(() => got.length === 5);
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  await broker.restart();
  const info = await recovered;
  assert.deepEqual(
    info.resumed.map((r) => r.room),
    ["resume-crash"],
  );
  // pub reconnects by itself too.
  for (let i = 6; i <= 10; i++) await pub.publish("resume-crash", "e", `m${i}`);
  await until(() => got.includes(10), 10_000, "the messages after the restart");
  await wait(200);
  // Acks lost in the crash may bring some back, but ordered mode never hands a seq twice.
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

test("unacknowledged deliveries come back after a reconnect; ordered mode hands them once", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "resume-fay", codec: textCodec });
  const room = await c.join("resume-unacked");
  const held: Delivery<string>[] = [];
  room.on("e", (_t, d) => void held.push(d));
  await pub.publish("resume-unacked", "e", "x");
  await until(() => held.length === 1);
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  await broker.restart();
  await recovered;
  await wait(300);
  assert.equal(held.length, 1, "the redelivery of a held message is not handed again");
  await held[0]?.ack();
  await pub.publish("resume-unacked", "e", "y");
  await until(() => held.length === 2);
  assert.equal(held[1]?.seq, 2);
});
