import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { bytesCodec, decodeClientFrame, decodeServerFrame, encodeClientFrame, jsonCodec, textCodec } from "../../src/codec.js";
import { ServerFrameSchema } from "../../src/gen/roomq_pb.js";
import { planJoin } from "../../src/join.js";
import { planPublish } from "../../src/publish.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

test("the handshake encodes to the bytes of docs/protocol.md §1", () => {
  const bytes = encodeClientFrame({ requestId: 1n, body: { case: "handshake", value: { protocolVersion: 1, namespace: "/", clientId: "alice" } } });
  // Without the 4-byte length prefix (00 00 00 10): one WebSocket message is one frame body.
  assert.equal(hex(bytes), "0801120c08011201" + "2f" + "2205616c696365");
  assert.equal(bytes.length, 16);
});

test("a ping encodes as in the protocol's example", () => {
  const bytes = encodeClientFrame({ requestId: 2n, body: { case: "ping", value: { nonce: 7n } } });
  assert.equal(hex(bytes), "080242020807");
});

test("explicit presence: max_deliveries 0 is written, absent is not", () => {
  const zero = planJoin("orders", { maxDeliveries: 0 }, true).join;
  const bytes = encodeClientFrame({ requestId: 3n, body: { case: "join", value: zero } });
  const back = decodeClientFrame(bytes);
  assert.equal(back.body.case, "join");
  if (back.body.case !== "join") return;
  assert.equal(back.body.value.maxDeliveries, 0, "an explicit 0 survives the round trip");
  // Field 11, varint: tag 0x58, value 0x00 inside the Join.
  assert.ok(hex(bytes).includes("5800"), `0x58 0x00 in ${hex(bytes)}`);

  const absent = planJoin("orders", {}, true).join;
  const bytes2 = encodeClientFrame({ requestId: 3n, body: { case: "join", value: absent } });
  const back2 = decodeClientFrame(bytes2);
  assert.ok(back2.body.case === "join" && back2.body.value.maxDeliveries === undefined, "absent stays absent");
  assert.ok(!hex(bytes2).includes("5800"));
});

test("explicit presence: expected_last_seq 0 (the room is empty) is written", () => {
  const p = planPublish(["r"], "e", new Uint8Array(), { expectedLastSeq: 0 });
  const bytes = encodeClientFrame({ requestId: 4n, body: { case: "publish", value: p } });
  const back = decodeClientFrame(bytes);
  assert.ok(back.body.case === "publish");
  if (back.body.case !== "publish") return;
  assert.equal(back.body.value.expectedLastSeq, 0n);
  // Field 7, varint: tag 0x38, value 0x00.
  assert.ok(hex(bytes).includes("3800"));
  const none = planPublish(["r"], "e", new Uint8Array(), {});
  const back2 = decodeClientFrame(encodeClientFrame({ requestId: 4n, body: { case: "publish", value: none } }));
  assert.ok(back2.body.case === "publish" && back2.body.value.expectedLastSeq === undefined);
});

test("a delivery decodes whatever the field order (volatile before message, seq first)", () => {
  // ServerFrame.delivery (9) { room "r", attempt 1, volatile(6) true, message(5) { seq 5, event "e", payload 00 ff } }
  const message = [0x08, 0x05, 0x12, 0x01, 0x65, 0x1a, 0x02, 0x00, 0xff];
  const delivery = [0x0a, 0x01, 0x72, 0x18, 0x01, 0x30, 0x01, 0x2a, message.length, ...message];
  const frame = new Uint8Array([0x4a, delivery.length, ...delivery]);
  const f = decodeServerFrame(frame);
  assert.equal(f.requestId, 0n);
  assert.equal(f.body.case, "delivery");
  if (f.body.case !== "delivery") return;
  assert.equal(f.body.value.volatile, true);
  assert.equal(f.body.value.message?.seq, 5n);
  assert.deepEqual([...(f.body.value.message?.payload ?? [])], [0, 255]);
});

test("unknown fields and bodies are skipped", () => {
  const known = toBinary(ServerFrameSchema, create(ServerFrameSchema, { requestId: 9n, body: { case: "pong", value: { nonce: 1n } } }));
  // Append field 99 (varint) and an unknown body field 40 (length-delimited).
  const extra = new Uint8Array([...known, 0x98, 0x06, 0x01, 0xc2, 0x02, 0x01, 0x00]);
  const f = decodeServerFrame(extra);
  assert.equal(f.requestId, 9n);
  assert.equal(f.body.case, "pong");
});

test("codecs are binary-safe and convert text and JSON", () => {
  const all = new Uint8Array(256).map((_, i) => i);
  assert.deepEqual(bytesCodec.encode(all), all);
  assert.equal(bytesCodec.decode(all), all);
  assert.deepEqual([...bytesCodec.encode("é")], [0xc3, 0xa9]);
  assert.throws(() => bytesCodec.encode(42 as unknown as string), TypeError);
  assert.equal(textCodec.decode(textCodec.encode("héllo ✓")), "héllo ✓");
  const json = jsonCodec<{ a: number[]; s: string }>();
  assert.deepEqual(json.decode(json.encode({ a: [1, 2], s: "x" })), { a: [1, 2], s: "x" });
});
