/**
 * A direct encoder for the one frame on the hot path, `ClientFrame { request_id,
 * publish }`: one size pass, one allocation, no reflection. It writes
 * exactly the bytes the generated code (protobuf-es `toBinary`) writes — a
 * unit test checks that on random publishes, and fails when `Publish` gains
 * a field this file does not know, so the generated schema stays the
 * single source of truth. Everything else goes through the generated code.
 */
import type { Publish } from "./gen/roomq_pb.js";

const encoder = new TextEncoder();

/** The field numbers of `Publish` this encoder writes (checked by a test against the schema). */
export const PUBLISH_FIELDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] as const;

function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3; // a lone surrogate becomes U+FFFD
    } else n += 3;
  }
  return n;
}

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function bigVarintSize(v: bigint): number {
  if (v <= 0x1fffffffffffffn) return varintSize(Number(v));
  let n = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    n++;
  }
  return n;
}

class Out {
  readonly buf: Uint8Array;
  pos = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
  }
  byte(b: number): void {
    this.buf[this.pos++] = b;
  }
  varint(v: number): void {
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 128) | 0x80;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }
  bigVarint(v: bigint): void {
    if (v <= 0x1fffffffffffffn) {
      this.varint(Number(v));
      return;
    }
    while (v >= 0x80n) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }
  string(s: string, len: number): void {
    this.varint(len);
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.pos, this.pos + len));
    this.pos += written ?? len;
  }
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

const strField = (s: string) => {
  const len = utf8Length(s);
  return 1 + varintSize(len) + len;
};
const bytesField = (b: Uint8Array) => 1 + varintSize(b.length) + b.length;

/** The size of `Publish` as protobuf bytes. */
function publishSize(p: Publish, headerSizes: number[]): number {
  let n = 0;
  for (const r of p.rooms) n += strField(r);
  if (p.event !== "") n += strField(p.event);
  if (p.payload.length > 0) n += bytesField(p.payload);
  for (const [k, v] of Object.entries(p.headers)) {
    const entry = strField(k) + strField(v);
    headerSizes.push(entry);
    n += 1 + varintSize(entry) + entry;
  }
  if (p.dedupId.length > 0) n += bytesField(p.dedupId);
  if (p.exceptSelf) n += 2;
  if (p.expectedLastSeq !== undefined) n += 1 + bigVarintSize(p.expectedLastSeq);
  if (p.key !== "") n += strField(p.key);
  if (p.ttlMs !== 0n) n += 1 + bigVarintSize(p.ttlMs);
  if (p.deliverAtMs !== 0n) n += 1 + bigVarintSize(p.deliverAtMs);
  if (p.delayMs !== 0n) n += 1 + bigVarintSize(p.delayMs);
  if (p.volatile) n += 2;
  for (const r of p.exceptRooms) n += strField(r);
  for (const s of p.exceptSessions) n += bytesField(s);
  return n;
}

function writeString(out: Out, tag: number, s: string): void {
  out.byte(tag);
  out.string(s, utf8Length(s));
}

/** `ClientFrame { request_id: requestId, publish: p }` as bytes. */
export function encodePublishFrame(requestId: bigint, p: Publish): Uint8Array {
  const headerSizes: number[] = [];
  const body = publishSize(p, headerSizes);
  const size = (requestId !== 0n ? 1 + bigVarintSize(requestId) : 0) + 1 + varintSize(body) + body;
  const out = new Out(size);
  if (requestId !== 0n) {
    out.byte(0x08);
    out.bigVarint(requestId);
  }
  out.byte(0x2a); // field 5, length-delimited
  out.varint(body);
  for (const r of p.rooms) writeString(out, 0x0a, r);
  if (p.event !== "") writeString(out, 0x12, p.event);
  if (p.payload.length > 0) {
    out.byte(0x1a);
    out.bytes(p.payload);
  }
  let h = 0;
  for (const [k, v] of Object.entries(p.headers)) {
    out.byte(0x22);
    out.varint(headerSizes[h++] ?? 0);
    writeString(out, 0x0a, k);
    writeString(out, 0x12, v);
  }
  if (p.dedupId.length > 0) {
    out.byte(0x2a);
    out.bytes(p.dedupId);
  }
  if (p.exceptSelf) {
    out.byte(0x30);
    out.byte(1);
  }
  if (p.expectedLastSeq !== undefined) {
    out.byte(0x38);
    out.bigVarint(p.expectedLastSeq);
  }
  if (p.key !== "") writeString(out, 0x42, p.key);
  if (p.ttlMs !== 0n) {
    out.byte(0x48);
    out.bigVarint(p.ttlMs);
  }
  if (p.deliverAtMs !== 0n) {
    out.byte(0x50);
    out.bigVarint(p.deliverAtMs);
  }
  if (p.delayMs !== 0n) {
    out.byte(0x58);
    out.bigVarint(p.delayMs);
  }
  if (p.volatile) {
    out.byte(0x60);
    out.byte(1);
  }
  for (const r of p.exceptRooms) writeString(out, 0x6a, r);
  for (const s of p.exceptSessions) {
    out.byte(0x72);
    out.bytes(s);
  }
  return out.pos === size ? out.buf : out.buf.subarray(0, out.pos);
}
