/**
 * A direct encoder for the one frame on the hot path, `ClientFrame { request_id,
 * publish }`: one size pass, one allocation, no reflection. It writes
 * exactly the bytes the generated code (protobuf-es `toBinary`) writes — a
 * unit test checks that on random publishes, and fails when `Publish` gains
 * a field this file does not know, so the generated schema stays the
 * single source of truth. Everything else goes through the generated code.
 */
import type { Delivery, Message, Publish } from "./gen/roomq_pb.js";

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

// ---------------------------------------------------------------------------
// Deliveries: the frame receivers see most. `decodeDeliveryFrame` returns the
// same value as the generated decoder for a push that holds only a
// `Delivery`; for anything else (another body, a request id, a group, a
// second `message`, bad UTF-8, truncated bytes) it returns undefined and the
// caller uses the generated decoder, which decides.

/** The field numbers of `Delivery` and `Message` this decoder reads (checked by a test). */
export const DELIVERY_FIELDS = [1, 2, 3, 4, 5, 6] as const;
export const MESSAGE_FIELDS = [1, 2, 3, 4, 5, 6, 7, 8, 9] as const;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Thrown inside the decoder to fall back; never escapes it. */
const FALLBACK = new Error("fall back to the generated decoder");

class In {
  readonly buf: Uint8Array;
  pos: number;
  readonly end: number;
  constructor(buf: Uint8Array, pos: number, end: number) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }
  /** A varint as a number; only for values below 2^53 (else fall back). */
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.pos >= this.end) throw FALLBACK;
      const b = this.buf[this.pos++] ?? 0;
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw FALLBACK;
  }
  /** A uint64 varint as a bigint. */
  u64(): bigint {
    const start = this.pos;
    let n = 0;
    while (n < 10) {
      if (this.pos >= this.end) throw FALLBACK;
      const b = this.buf[this.pos++] ?? 0;
      n++;
      if (b < 0x80) break;
      if (n === 10) throw FALLBACK;
    }
    if (n <= 7) {
      this.pos = start;
      return BigInt(this.varint());
    }
    let v = 0n;
    for (let i = this.pos - 1; i >= start; i--) v = (v << 7n) | BigInt((this.buf[i] ?? 0) & 0x7f);
    return BigInt.asUintN(64, v);
  }
  len(): number {
    const n = this.varint();
    if (n > this.end - this.pos) throw FALLBACK;
    return n;
  }
  bytes(): Uint8Array {
    const n = this.len();
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  string(): string {
    const n = this.len();
    let s: string;
    try {
      s = strictUtf8.decode(this.buf.subarray(this.pos, this.pos + n));
    } catch {
      throw FALLBACK;
    }
    this.pos += n;
    return s;
  }
  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.u64();
        return;
      case 1:
        if (this.end - this.pos < 8) throw FALLBACK;
        this.pos += 8;
        return;
      case 2: {
        const n = this.len(); // before reading pos: len() moves it
        this.pos += n;
        return;
      }
      case 5:
        if (this.end - this.pos < 4) throw FALLBACK;
        this.pos += 4;
        return;
      default:
        throw FALLBACK;
    }
  }
}

/** Shared by every message without a payload or session (an empty view cannot be written to). */
const EMPTY = new Uint8Array(0);

function readMessage(r: In): Message {
  const m: Message = {
    $typeName: "roomq.v1.Message",
    seq: 0n,
    event: "",
    payload: EMPTY,
    headers: {},
    publisherSession: EMPTY,
    timestampMs: 0n,
    key: "",
    expiresAtMs: 0n,
    deliverAtMs: 0n,
  };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 0) m.seq = r.u64();
    else if (field === 2 && wt === 2) m.event = r.string();
    else if (field === 3 && wt === 2) m.payload = r.bytes();
    else if (field === 4 && wt === 2) {
      const n = r.len();
      const entry = new In(r.buf, r.pos, r.pos + n);
      let k = "";
      let v = "";
      while (entry.pos < entry.end) {
        const t = entry.varint();
        if (t === 0x0a) k = entry.string();
        else if (t === 0x12) v = entry.string();
        else entry.skip(t & 7);
      }
      m.headers[k] = v;
      r.pos += n;
    } else if (field === 5 && wt === 2) m.publisherSession = r.bytes();
    else if (field === 6 && wt === 0) m.timestampMs = r.u64();
    else if (field === 7 && wt === 2) m.key = r.string();
    else if (field === 8 && wt === 0) m.expiresAtMs = r.u64();
    else if (field === 9 && wt === 0) m.deliverAtMs = r.u64();
    else if (field >= 1 && field <= 9) throw FALLBACK; // a known field with another wire type
    else r.skip(wt); // unknown fields: the generated decoder would keep them in $unknown; nothing reads them
  }
  return m;
}

/** A push holding only a `Delivery`, decoded directly; undefined for anything else. */
export function decodeDeliveryFrame(bytes: Uint8Array): Delivery | undefined {
  try {
    const r = new In(bytes, 0, bytes.length);
    let delivery: Delivery | undefined;
    while (r.pos < r.end) {
      const tag = r.varint();
      if (tag === 0x08) {
        if (r.u64() !== 0n) return undefined; // a reply, not a push
      } else if (tag === 0x4a && delivery === undefined) {
        const n = r.len();
        delivery = readDelivery(new In(bytes, r.pos, r.pos + n));
        r.pos += n;
      } else return undefined;
    }
    return delivery;
  } catch (e) {
    if (e === FALLBACK) return undefined;
    throw e;
  }
}

function readDelivery(r: In): Delivery {
  const d: Delivery = { $typeName: "roomq.v1.Delivery", room: "", subscription: "", attempt: 0, redelivered: false, message: undefined, volatile: false };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 2) d.room = r.string();
    else if (field === 2 && wt === 2) d.subscription = r.string();
    else if (field === 3 && wt === 0) d.attempt = Number(BigInt.asUintN(32, r.u64()));
    else if (field === 4 && wt === 0) d.redelivered = r.u64() !== 0n;
    else if (field === 5 && wt === 2 && d.message === undefined) {
      const n = r.len();
      d.message = readMessage(new In(r.buf, r.pos, r.pos + n));
      r.pos += n;
    } else if (field === 6 && wt === 0) d.volatile = r.u64() !== 0n;
    else if (field >= 1 && field <= 6) throw FALLBACK;
    else r.skip(wt);
  }
  return d;
}
