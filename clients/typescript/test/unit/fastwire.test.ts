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
