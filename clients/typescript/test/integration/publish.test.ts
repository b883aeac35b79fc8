import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { jsonCodec, textCodec, type Delivery } from "../../src/index.js";
import { Broker, until } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("publish resolves once stored, with increasing seqs and sync durability", async () => {
  const c = await broker.client();
  const a = await c.publish("pub-1", "e", "one");
  const b = await c.publish("pub-1", "e", "two");
  assert.equal(a.seq, 1);
  assert.equal(b.seq, 2);
  assert.equal(a.durability, "sync");
  assert.equal(a.duplicate, false);
  assert.match(a.dedupId, /^[0-9a-f-]{36}$/);
  const multi = await c.publish(["pub-1", "pub-2"], "e", "both");
  assert.deepEqual(multi.seqs, [
    { room: "pub-1", seq: 3 },
    { room: "pub-2", seq: 1 },
  ]);
  const rooms = await c.rooms();
  assert.equal(rooms.find((r) => r.name === "pub-1")?.lastSeq, 3);
});

test("a window of publishes in flight: all confirmed, in order", async () => {
  const c = await broker.client({ publishWindow: 64 });
  const results = await Promise.all(Array.from({ length: 500 }, (_, i) => c.publish("pub-window", "e", `m${i}`)));
  assert.deepEqual(
    results.map((r) => r.seq),
    Array.from({ length: 500 }, (_, i) => i + 1),
  );
});

test("a retry with the same dedup id gets the original seq back", async () => {
  const c = await broker.client();
  const id = "0190f3c2-7d1e-7a00-8000-00000000abcd";
  const first = await c.publish("pub-dedup", "e", "x", { dedupId: id });
  const again = await c.publish("pub-dedup", "e", "x", { dedupId: id });
  assert.equal(again.seq, first.seq);
  assert.equal(again.duplicate, true);
});

test("payloads are binary-safe; JSON through a codec", async () => {
  const sender = await broker.client();
  const receiver = await broker.client({ clientId: "bin-receiver" });
  const room = await receiver.join("pub-bin");
  const got: Delivery<Uint8Array | string>[] = [];
  room.on("bytes", (_data, d) => void got.push(d));
  const all = new Uint8Array(256).map((_, i) => i);
  await sender.publish("pub-bin", "bytes", all, { headers: { kind: "all-bytes" }, key: "k1" });
  await until(() => got.length === 1);
  assert.deepEqual([...(got[0]?.payload ?? [])], [...all]);
  assert.equal(got[0]?.headers["kind"], "all-bytes");
  assert.equal(got[0]?.key, "k1");
  assert.equal(got[0]?.publisherSession, sender.sessionId);

  const jsonA = await broker.client({ codec: jsonCodec<{ text: string; n: number }>() });
  const jsonB = await broker.client({ codec: jsonCodec<{ text: string; n: number }>(), clientId: "json-b" });
  const jr = await jsonB.join("pub-json", { autoAck: true });
  const values: Array<{ text: string; n: number }> = [];
  jr.on("chat message", (data) => void values.push(data));
  await jsonA.publish("pub-json", "chat message", { text: "héllo", n: 3 });
  await until(() => values.length === 1);
  assert.deepEqual(values, [{ text: "héllo", n: 3 }]);
});

test("to(room).except(room).emit(): everyone in the room except the sender and the except room's members", async () => {
  const mk = (id: string) => broker.client({ clientId: id, codec: textCodec });
  const [alice, bob, carol] = await Promise.all([mk("emit-alice"), mk("emit-bob"), mk("emit-carol")]);
  const lines: Record<string, string[]> = { alice: [], bob: [], carol: [] };
  for (const [name, c] of [
    ["alice", alice],
    ["bob", bob],
    ["carol", carol],
  ] as const) {
    const r = await c.join("emit-general", { autoAck: true });
    r.on("chat message", (text) => void lines[name]?.push(text));
  }
  await carol.join("emit-muted");
  await alice.to("emit-general").except("emit-muted").emit("chat message", "hi all");
  await alice.publish("emit-general", "chat message", "marker"); // delivered to everyone, alice included
  await until(() => (lines["bob"]?.length ?? 0) === 2 && (lines["alice"]?.length ?? 0) === 1 && (lines["carol"]?.length ?? 0) === 1);
  assert.deepEqual(lines["bob"], ["hi all", "marker"]);
  assert.deepEqual(lines["alice"], ["marker"], "not to the sender");
  assert.deepEqual(lines["carol"], ["marker"], "not to a member of the except room");
});

test("volatile emits reach members joined now and are not stored", async () => {
  const a = await broker.client({ codec: textCodec });
  const b = await broker.client({ codec: textCodec });
  const r = await b.join("pub-volatile");
  const typing: string[] = [];
  r.on("typing", (t, d) => {
    typing.push(t);
    assert.equal(d.volatile, true);
    assert.equal(d.seq, 0);
  });
  const res = await a.to("pub-volatile").volatile.emit("typing", "alice");
  assert.equal(res.durability, "volatile");
  assert.deepEqual(res.seqs, []);
  await until(() => typing.length === 1);
  const rooms = await a.rooms();
  assert.equal(rooms.find((x) => x.name === "pub-volatile")?.lastSeq, 0);
});
