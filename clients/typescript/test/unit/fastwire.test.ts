import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { encodePublishFrame, PUBLISH_FIELDS } from "../../src/fastwire.js";
import { ClientFrameSchema, PublishSchema, type Publish } from "../../src/gen/roomq_pb.js";

test("the direct encoder knows every field of Publish (update fastwire.ts when the proto changes)", () => {
  assert.deepEqual(
    PublishSchema.fields.map((f) => f.number).sort((a, b) => a - b),
    [...PUBLISH_FIELDS],
  );
});

// A small deterministic generator, so failures reproduce.
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const ALPHABET = ["a", "z", "0", " ", "é", "✓", "😀", "\u{10FFFF}", "-", "\u0080", "\u07ff", "\u0800"];

function randomPublish(r: () => number): Publish {
  const str = (max: number) => Array.from({ length: Math.floor(r() * max) }, () => ALPHABET[Math.floor(r() * ALPHABET.length)]).join("");
  const bytes = (max: number) => new Uint8Array(Math.floor(r() * max)).map(() => Math.floor(r() * 256));
  const big = () => (r() < 0.4 ? 0n : r() < 0.5 ? BigInt(Math.floor(r() * 300)) : r() < 0.5 ? BigInt(Math.floor(r() * 2 ** 52)) : 2n ** 64n - 1n - BigInt(Math.floor(r() * 1000)));
  const headers: Record<string, string> = {};
  for (let i = Math.floor(r() * 4); i > 0; i--) headers[str(6) || "k"] = str(10);
  const p = create(PublishSchema, {
    rooms: Array.from({ length: 1 + Math.floor(r() * 3) }, () => str(12) || "room"),
    event: str(10),
    payload: bytes(r() < 0.1 ? 300 : 140),
    headers,
    dedupId: r() < 0.7 ? bytes(17).subarray(0, 16) : new Uint8Array(),
    exceptSelf: r() < 0.5,
    key: r() < 0.5 ? str(8) : "",
    ttlMs: big(),
    deliverAtMs: big(),
    delayMs: big(),
    volatile: r() < 0.3,
    exceptRooms: Array.from({ length: Math.floor(r() * 3) }, () => str(5)),
    exceptSessions: Array.from({ length: Math.floor(r() * 3) }, () => bytes(17).subarray(0, 16)),
  });
  if (r() < 0.5) p.expectedLastSeq = r() < 0.3 ? 0n : big();
  return p;
}

test("the direct Publish encoder writes exactly the generated code's bytes", () => {
  const r = rng(13);
  for (let i = 0; i < 3000; i++) {
    const p = randomPublish(r);
    const requestId = i % 7 === 0 ? 0n : i % 5 === 0 ? 2n ** 63n + BigInt(i) : BigInt(i);
    const expected = toBinary(ClientFrameSchema, create(ClientFrameSchema, { requestId, body: { case: "publish", value: p } }));
    const actual = encodePublishFrame(requestId, p);
    assert.deepEqual(Buffer.from(actual).toString("hex"), Buffer.from(expected).toString("hex"), `publish #${i}`);
  }
});

test("an explicit expected_last_seq of 0 is written by the direct encoder too", () => {
  const p = create(PublishSchema, { rooms: ["r"], event: "e" });
  assert.ok(!Buffer.from(encodePublishFrame(1n, p)).toString("hex").includes("3800"));
  p.expectedLastSeq = 0n;
  assert.ok(Buffer.from(encodePublishFrame(1n, p)).toString("hex").includes("3800"));
});

import { decodeDeliveryFrame, DELIVERY_FIELDS, MESSAGE_FIELDS } from "../../src/fastwire.js";
import { DeliverySchema, MessageSchema, ServerFrameSchema } from "../../src/gen/roomq_pb.js";
import { fromBinary } from "@bufbuild/protobuf";

test("the direct decoder knows every field of Delivery and Message", () => {
  assert.deepEqual(DeliverySchema.fields.map((f) => f.number).sort((a, b) => a - b), [...DELIVERY_FIELDS]);
  assert.deepEqual(MessageSchema.fields.map((f) => f.number).sort((a, b) => a - b), [...MESSAGE_FIELDS]);
});

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

test("the direct Delivery decoder reads what the generated decoder reads", () => {
  const r = rng(29);
  const str = (max: number) => Array.from({ length: Math.floor(r() * max) }, () => ALPHABET[Math.floor(r() * ALPHABET.length)]).join("");
  const big = () => (r() < 0.3 ? 0n : r() < 0.5 ? BigInt(Math.floor(r() * 2 ** 40)) : 2n ** 64n - 1n - BigInt(Math.floor(r() * 1000)));
  for (let i = 0; i < 3000; i++) {
    const headers: Record<string, string> = {};
    for (let h = Math.floor(r() * 3); h > 0; h--) headers[str(5)] = str(8);
    const frame = create(ServerFrameSchema, {
      body: {
        case: "delivery",
        value: {
          room: str(10),
          subscription: str(6),
          attempt: Math.floor(r() * 2 ** 32),
          redelivered: r() < 0.5,
          volatile: r() < 0.3,
          message: r() < 0.05 ? undefined : { seq: big(), event: str(10), payload: new Uint8Array(Math.floor(r() * 200)).map(() => Math.floor(r() * 256)), headers, publisherSession: new Uint8Array(16).fill(i % 256), timestampMs: big(), key: str(4), expiresAtMs: big(), deliverAtMs: big() },
        },
      },
    });
    const bytes = toBinary(ServerFrameSchema, frame);
    const direct = decodeDeliveryFrame(bytes);
    const generated = fromBinary(ServerFrameSchema, bytes);
    assert.ok(direct, `delivery #${i} decoded directly`);
    assert.equal(generated.body.case, "delivery");
    assert.deepEqual(strip(direct), strip(generated.body.value), `delivery #${i}`);
  }
});

test("the direct decoder takes the broker's field order and skips unknown fields; it declines other frames", () => {
  // The broker writes volatile (6) before message (5), and seq first in the message.
  const message = [0x08, 0x05, 0x12, 0x01, 0x65, 0x1a, 0x02, 0x00, 0xff, 0xf8, 0x06, 0x2a /* field 111 varint */];
  const delivery = [0x0a, 0x01, 0x72, 0x18, 0x01, 0x30, 0x01, 0x2a, message.length, ...message, 0xa2, 0x06, 0x01, 0x00 /* field 100 LEN */];
  const bytes = new Uint8Array([0x4a, delivery.length, ...delivery]);
  const d = decodeDeliveryFrame(bytes);
  assert.ok(d);
  assert.equal(d.volatile, true);
  assert.equal(d.message?.seq, 5n);
  assert.deepEqual(strip(d), strip(fromBinary(ServerFrameSchema, bytes).body.value));
  const pong = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 3n, body: { case: "pong", value: { nonce: 1n } } }));
  assert.equal(decodeDeliveryFrame(pong), undefined);
  const reply = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 3n, body: { case: "delivery", value: { room: "r" } } }));
  assert.equal(decodeDeliveryFrame(reply), undefined, "a request id: not a push");
  assert.equal(decodeDeliveryFrame(bytes.subarray(0, bytes.length - 3)), undefined, "truncated: the generated decoder decides");
  const badUtf8 = new Uint8Array([0x4a, 0x03, 0x0a, 0x01, 0xff]);
  assert.equal(decodeDeliveryFrame(badUtf8), undefined);
  assert.throws(() => fromBinary(ServerFrameSchema, badUtf8));
});
