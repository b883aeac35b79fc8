import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { textCodec } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("a group splits the room's messages between its consumers, each message once", async () => {
  const pub = await broker.client({ codec: textCodec });
  const w1 = await broker.client({ codec: textCodec });
  const w2 = await broker.client({ codec: textCodec });
  const got: Record<string, number[]> = { w1: [], w2: [] };
  for (const [name, c] of [
    ["w1", w1],
    ["w2", w2],
  ] as const) {
    const r = await c.join("grp-jobs", { group: "workers", start: "earliest", maxInFlight: 4 });
    assert.equal(r.mode, "shared");
    r.on("job", async (_t, d) => {
      got[name]?.push(d.seq);
      await d.ack();
    });
  }
  const N = 60;
  await Promise.all(Array.from({ length: N }, (_, i) => pub.publish("grp-jobs", "job", `j${i}`)));
  await until(() => (got["w1"]?.length ?? 0) + (got["w2"]?.length ?? 0) >= N, 10_000, "all jobs");
  await wait(200);
  const all = [...(got["w1"] ?? []), ...(got["w2"] ?? [])].sort((a, b) => a - b);
  assert.deepEqual(all, Array.from({ length: N }, (_, i) => i + 1), "each job exactly once");
  assert.ok((got["w1"]?.length ?? 0) > 0 && (got["w2"]?.length ?? 0) > 0, `both consumers worked: ${got["w1"]?.length} / ${got["w2"]?.length}`);
});

test("messages with one ordering key go to one consumer, in order", async () => {
  const pub = await broker.client({ codec: textCodec });
  const consumers = await Promise.all([broker.client({ codec: textCodec }), broker.client({ codec: textCodec })]);
  const byKey = new Map<string, Array<{ who: number; n: number }>>();
  for (const [i, c] of consumers.entries()) {
    const r = await c.join("grp-keys", { group: "k", autoAck: true });
    r.on("e", (t, d) => {
      const list = byKey.get(d.key) ?? [];
      list.push({ who: i, n: Number(t) });
      byKey.set(d.key, list);
    });
  }
  for (let n = 0; n < 20; n++) await pub.publish("grp-keys", "e", String(n), { key: `key-${n % 4}` });
  await until(() => [...byKey.values()].reduce((s, l) => s + l.length, 0) === 20, 10_000, "keyed messages");
  for (const list of byKey.values()) {
    assert.equal(new Set(list.map((x) => x.who)).size, 1, "one consumer per key");
    const ns = list.map((x) => x.n);
    assert.deepEqual(ns, [...ns].sort((a, b) => a - b), "in order");
  }
});
