import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { textCodec, type GapNotice } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("retention trims what a durable member was away for: a gap notice, then the rest in order", async () => {
  const pub = await broker.client({ codec: textCodec });
  const first = await broker.client({ clientId: "gap-gil", codec: textCodec });
  await first.join("trim-room"); // a durable member; the test config keeps 2 messages in trim*
  first.close();
  for (let i = 1; i <= 6; i++) await pub.publish("trim-room", "e", `m${i}`);
  await wait(400); // a few retention sweeps (every 100 ms)
  const back = await broker.client({ clientId: "gap-gil", codec: textCodec });
  const gaps: GapNotice[] = [];
  const got: number[] = [];
  const room = await back.join("trim-room");
  room.on("gap", (g) => void gaps.push(g));
  room.on("e", async (_t, d) => {
    got.push(d.seq);
    await d.ack();
  });
  await until(() => gaps.length === 1 && got.length === 2, 5000, "the gap and the kept messages").catch((e: unknown) => {
    throw new Error(`${String(e)}: gaps ${JSON.stringify(gaps)}, got ${JSON.stringify(got)}, joined ${JSON.stringify(room.info)}`);
  });
  assert.deepEqual(gaps[0], { room: "trim-room", subscription: "", fromSeq: 1, toSeq: 4, missed: 4 });
  assert.deepEqual(got, [5, 6]);
});
