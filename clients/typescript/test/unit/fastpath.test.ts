/**
 * The hot paths against their plain counterparts: the direct reply
 * decoders and Ack encoder against the generated code, the Publish message
 * against `create`, the delivery filter against a straightforward model,
 * and the string cache and frame slabs against reuse.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { planAcks } from "../../src/acks.js";
import { ACK_FIELDS, ACK_OK_FIELDS, PUBLISH_OK_FIELDS, ROOM_SEQ_FIELDS, decodeFastFrame, encodeAckFrame, encodePublishFrame } from "../../src/fastwire.js";
import { Filter, type FilterMode, type Verdict } from "../../src/filter.js";
import { AckOkSchema, AckSchema, ClientFrameSchema, type Durability, PublishOkSchema, PublishSchema, RoomSeqSchema, ServerFrameSchema } from "../../src/gen/roomq_pb.js";
import { planPublish, publishMessage, type PublishOptions } from "../../src/publish.js";

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const ALPHABET = ["a", "z", "0", " ", "é", "✓", "😀", "-", "\u0080", "\u07ff", "\u0800"];

function strip(v: unknown): unknown {
  if (v instanceof Uint8Array) return [...v];
  if (Array.isArray(v)) return v.map(strip);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (k !== "$unknown" && x !== undefined) out[k] = strip(x);
    return out;
  }
  return v;
}

test("the direct decoders and the Ack encoder know every field of their messages", () => {
  const numbers = (s: { fields: Array<{ number: number }> }) => s.fields.map((f) => f.number).sort((a, b) => a - b);
  assert.deepEqual(numbers(PublishOkSchema), [...PUBLISH_OK_FIELDS]);
  assert.deepEqual(numbers(RoomSeqSchema), [...ROOM_SEQ_FIELDS]);
  assert.deepEqual(numbers(AckOkSchema), [...ACK_OK_FIELDS]);
  assert.deepEqual(numbers(AckSchema), [...ACK_FIELDS]);
});

test("PublishOk and AckOk replies decode directly to what the generated decoder reads", () => {
  const r = rng(41);
  const str = (max: number) => Array.from({ length: Math.floor(r() * max) }, () => ALPHABET[Math.floor(r() * ALPHABET.length)]).join("");
  const big = () => (r() < 0.3 ? 0n : r() < 0.5 ? BigInt(Math.floor(r() * 2 ** 40)) : 2n ** 64n - 1n - BigInt(Math.floor(r() * 1000)));
  for (let i = 0; i < 2000; i++) {
    const requestId = i % 9 === 0 ? 0n : BigInt(1 + Math.floor(r() * 2 ** 40));
    const body =
      i % 2 === 0
        ? ({ case: "publishOk", value: { seqs: Array.from({ length: Math.floor(r() * 4) }, () => ({ room: str(12), seq: big() })), duplicate: r() < 0.3, durability: Math.floor(r() * 4) } } as const)
        : ({ case: "ackOk", value: { nextSeq: big() } } as const);
    const bytes = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId, body }));
    const generated = fromBinary(ServerFrameSchema, bytes);
    const fast = decodeFastFrame(bytes);
    assert.ok(fast, `frame #${i} decoded directly`);
    assert.equal(BigInt(fast.requestId), generated.requestId);
    assert.equal(fast.body.case, generated.body.case);
    assert.deepEqual(strip(fast.body.value), strip(generated.body.value), `frame #${i}`);
  }
});

test("the direct decoder declines what it does not read exactly, and skips unknown fields", () => {
  const ok = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 7n, body: { case: "publishOk", value: { seqs: [{ room: "r", seq: 3n }], durability: 1 } } }));
  // An unknown field inside PublishOk (field 20, varint) is skipped.
  const inner = toBinary(PublishOkSchema, create(PublishOkSchema, { seqs: [{ room: "r", seq: 3n }], durability: 1 }));
  const withUnknown = new Uint8Array([0x08, 0x07, 0x2a, inner.length + 3, ...inner, 0xa0, 0x01, 0x05]);
  assert.deepEqual(strip(decodeFastFrame(withUnknown)?.body.value), strip(fromBinary(ServerFrameSchema, withUnknown).body.value));
  assert.ok(decodeFastFrame(ok));
  // Two bodies, another body, a truncated frame, a negative enum, a request id past 2^53: the generated decoder decides.
  assert.equal(decodeFastFrame(new Uint8Array([...ok, 0x32, 0x00])), undefined);
  const pong = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 3n, body: { case: "pong", value: { nonce: 1n } } }));
  assert.equal(decodeFastFrame(pong), undefined);
  assert.equal(decodeFastFrame(ok.subarray(0, ok.length - 1)), undefined);
  const negative = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 3n, body: { case: "publishOk", value: { durability: -1 as Durability } } }));
  assert.equal(decodeFastFrame(negative), undefined);
  const hugeId = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 2n ** 60n, body: { case: "ackOk", value: { nextSeq: 1n } } }));
  assert.equal(decodeFastFrame(hugeId), undefined);
});

test("the direct Ack encoder writes exactly the generated code's bytes", () => {
  const r = rng(43);
  const str = (max: number) => Array.from({ length: Math.floor(r() * max) }, () => ALPHABET[Math.floor(r() * ALPHABET.length)]).join("");
  for (let i = 0; i < 2000; i++) {
    const seqs = Array.from({ length: Math.floor(r() * 6) }, () => Math.floor(r() * (r() < 0.5 ? 300 : 2 ** 52)));
    const upTo = r() < 0.4 ? 0 : Math.floor(r() * 2 ** 40);
    const room = str(12);
    const subscription = r() < 0.5 ? "" : str(8);
    const requestId = i % 11 === 0 ? 0 : 1 + Math.floor(r() * 2 ** 45);
    const expected = toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId: BigInt(requestId), body: { case: "ack", value: { room, subscription, seqs: seqs.map(BigInt), upTo: BigInt(upTo) } } }));
    const actual = encodeAckFrame(requestId, { room, subscription, seqs, upTo });
    assert.equal(Buffer.from(actual).toString("hex"), Buffer.from(expected).toString("hex"), `ack #${i}`);
  }
});

test("publishMessage makes what create(PublishSchema, plan) makes", () => {
  const session = "0190f3c2-7d1e-7a00-8000-000000000001";
  const cases: PublishOptions[] = [
    {},
    { volatile: true },
    { expectedLastSeq: 0 },
    { expectedLastSeq: 12n, ttlMs: 5, delayMs: 1.2, deliverAt: new Date(1_800_000_000_000) },
    { rooms: ["b", "c"], headers: { a: "1", "é": "✓" }, key: "k", exceptSelf: true, exceptRooms: ["x"], exceptSessions: [session], dedupId: session },
  ];
  for (const options of cases) {
    const plan = planPublish(["a"], "e", new Uint8Array([1, 2]), options);
    assert.deepStrictEqual(strip(publishMessage(plan)), strip(create(PublishSchema, plan)), `options ${cases.indexOf(options)}`);
    assert.equal("expectedLastSeq" in publishMessage(plan), "expectedLastSeq" in create(PublishSchema, plan));
    assert.equal(
      Buffer.from(encodePublishFrame(5, publishMessage(plan))).toString("hex"),
      Buffer.from(toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId: 5n, body: { case: "publish", value: create(PublishSchema, plan) } }))).toString("hex"),
    );
  }
  const rooms = ["a"];
  const plan = planPublish(rooms, "e", new Uint8Array(), {});
  rooms.push("later");
  assert.deepEqual(plan.rooms, ["a"], "the request keeps its own copy of the rooms");
});

test("frames cut from a slab stay intact while later frames are encoded", () => {
  const first = encodePublishFrame(1, publishMessage(planPublish(["room"], "event", new Uint8Array(100).fill(7), {})));
  const copy = Uint8Array.from(first);
  for (let i = 0; i < 5000; i++) encodePublishFrame(i + 2, publishMessage(planPublish(["room"], "event", new Uint8Array(100).fill(i % 256), {})));
  assert.deepEqual(first, copy);
});

test("cached strings: equal bytes give the same text, different bytes never do", () => {
  const frame = (room: string) => toBinary(ServerFrameSchema, create(ServerFrameSchema, { body: { case: "delivery", value: { room, message: { seq: 1n, event: "e" } } } }));
  // Same length, first, middle and last byte: the same cache slot, different text.
  const a = "a1xxxxxa2";
  const b = "a3xxxxxa2";
  for (let i = 0; i < 3; i++) {
    for (const room of [a, b, "é✓", "a1xxxxxa2", "x".repeat(70), "x".repeat(69) + "y"]) {
      const f = decodeFastFrame(frame(room));
      assert.ok(f && f.body.case === "delivery");
      assert.equal(f.body.value.room, room);
    }
  }
  // Invalid UTF-8 is never taken from the cache: the generated decoder decides.
  const bad = new Uint8Array([0x4a, 0x04, 0x0a, 0x02, 0xc3, 0x28]);
  assert.equal(decodeFastFrame(bad), undefined);
});

/** The filter as it was written first, without its fast paths: the model the filter must match. */
class ModelFilter {
  private floor = 1;
  private readonly acked = new Set<number>();
  private readonly heldAt = new Map<number, number>();
  private lastHanded = 0;
  private readonly released = new Set<number>();
  constructor(readonly mode: FilterMode) {}
  offer(seq: number, now: number): Verdict {
    if (seq < this.floor || this.acked.has(seq)) return "reack";
    if (this.mode === "ordered") {
      if (this.heldAt.has(seq)) return "drop";
      if (seq <= this.lastHanded && !this.released.delete(seq)) return "drop";
    } else if (this.mode === "shared") {
      if (this.heldAt.has(seq)) return "drop";
      this.released.delete(seq);
    } else this.released.delete(seq);
    this.heldAt.set(seq, now);
    if (seq > this.lastHanded) this.lastHanded = seq;
    return "hand";
  }
  ack(seq: number): void {
    this.heldAt.delete(seq);
    this.released.delete(seq);
    if (seq >= this.floor) this.acked.add(seq);
    while (this.acked.delete(this.floor)) this.floor++;
  }
  advanceFloor(next: number): void {
    if (next > this.floor) {
      this.floor = next;
      for (const s of this.acked) if (s < next) this.acked.delete(s);
    }
    while (this.acked.delete(this.floor)) this.floor++;
  }
  skipped(from: number, to: number): void {
    for (const s of [...this.heldAt.keys()]) if (s >= from && s <= to) this.heldAt.delete(s);
    for (const s of [...this.released]) if (s >= from && s <= to) this.released.delete(s);
    this.advanceFloor(to + 1);
  }
  release(seq: number): void {
    if (this.heldAt.delete(seq)) this.released.add(seq);
  }
  expireHeld(cutoff: number): number[] {
    const old = [...this.heldAt].filter(([, t]) => t < cutoff).map(([s]) => s);
    for (const s of old) {
      this.heldAt.delete(s);
      this.released.add(s);
    }
    return old.sort((a, b) => a - b);
  }
  held(): number[] {
    return [...this.heldAt.keys()].sort((a, b) => a - b);
  }
  holds(seq: number): boolean {
    return this.heldAt.has(seq);
  }
  ackedFloor(): number {
    return this.floor;
  }
  lowestOutstanding(): number {
    return Math.min(Infinity, ...this.heldAt.keys(), ...this.released);
  }
}

test("the filter matches its model on random operations, in every mode", () => {
  for (const mode of ["ordered", "unordered", "shared"] as const) {
    for (let run = 0; run < 60; run++) {
      const r = rng(1000 * run + mode.length);
      const f = new Filter(mode);
      const m = new ModelFilter(mode);
      let next = 1;
      for (let step = 0; step < 400; step++) {
        const x = r();
        const seq = Math.max(1, next - Math.floor(r() * 8));
        const where = `${mode} run ${run} step ${step}`;
        if (x < 0.4) {
          assert.equal(f.offer(seq, step), m.offer(seq, step), where);
          if (seq === next) next++;
        } else if (x < 0.65) {
          f.ack(seq);
          m.ack(seq);
        } else if (x < 0.72) f.release(seq), m.release(seq);
        else if (x < 0.76) assert.deepEqual(f.expireHeld(step - 20), m.expireHeld(step - 20), where);
        else if (x < 0.8) f.advanceFloor(seq), m.advanceFloor(seq);
        else if (x < 0.82) f.skipped(seq, seq + 2), m.skipped(seq, seq + 2);
        else if (x < 0.9) assert.equal(f.holds(seq), m.holds(seq), where);
        else assert.equal(f.lowestOutstanding(), m.lowestOutstanding(), where);
        if (step % 25 === 0) {
          assert.deepEqual(f.held(), m.held(), where);
          assert.equal(f.ackedFloor(), m.ackedFloor(), where);
        }
      }
    }
  }
});

test("planAcks gives the same plan for ascending input as for the same seqs shuffled", () => {
  const r = rng(5);
  for (let i = 0; i < 300; i++) {
    const seqs = [...new Set(Array.from({ length: Math.floor(r() * 30) }, () => 1 + Math.floor(r() * 60)))].sort((a, b) => a - b);
    const shuffled = [...seqs, ...seqs.slice(0, 3), 0, -1].sort(() => r() - 0.5);
    const low = r() < 0.5 ? Infinity : 1 + Math.floor(r() * 60);
    assert.deepEqual(planAcks(seqs, low, true), planAcks(shuffled, low, true));
    assert.deepEqual(planAcks(seqs, low, false), planAcks(shuffled, low, false));
  }
});
