import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { textCodec, type RecoveredInfo } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("publishes in flight when the broker is SIGKILLed are re-sent with their dedup ids: each stored exactly once", async () => {
  const c = await broker.client({ publishWindow: 128, codec: textCodec });
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  const N = 2000;
  const all = Array.from({ length: N }, (_, i) => c.publish("restart-dedup", "e", `m${i}`));
  // Let part of them be stored, then crash the broker mid-stream.
  await until(() => c.unconfirmed < N - 200, 10_000, "some confirmations");
  await broker.restart();
  const info = await recovered;
  const results = await Promise.all(all);
  const seqs = results.map((r) => r.seq).sort((a, b) => a - b);
  assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), "every publish has its own seq, none twice");
  const rooms = await c.rooms();
  assert.equal(rooms.find((r) => r.name === "restart-dedup")?.lastSeq, N, "the room holds exactly N messages");
  assert.ok(info.resent >= 0);

  // Read the room back: each payload once.
  const reader = await broker.client({ codec: textCodec, clientId: "restart-reader" });
  const room = await reader.join("restart-dedup", { start: "earliest", autoAck: true });
  const seen = new Set<string>();
  let count = 0;
  room.on("e", (t) => {
    seen.add(t);
    count++;
  });
  await until(() => count >= N, 15_000, "the whole room");
  await wait(100);
  assert.equal(count, N);
  assert.equal(seen.size, N);
});

test("a publish with an explicit dedup id, repeated after a crash and restart, is stored once", async () => {
  const c = await broker.client();
  const id = "0190f3c2-7d1e-7a00-8000-0000000000aa";
  const first = await c.publish("restart-explicit", "e", "x", { dedupId: id });
  await broker.restart();
  const again = await c.publish("restart-explicit", "e", "x", { dedupId: id });
  assert.equal(again.seq, first.seq);
  assert.equal(again.duplicate, true);
});

test("publishes made while the broker is down wait in the offline queue and are stored after it returns", async () => {
  const c = await broker.client({ codec: textCodec });
  await c.publish("restart-offline", "e", "before");
  await broker.kill();
  await until(() => c.state === "reconnecting", 5000, "the loss to be seen");
  const queued = [c.publish("restart-offline", "e", "q1"), c.publish("restart-offline", "e", "q2")];
  await wait(200);
  await broker.restart();
  const results = await Promise.all(queued);
  assert.deepEqual(
    results.map((r) => r.seq),
    [2, 3],
  );
});
