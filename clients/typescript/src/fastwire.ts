/**
 * A direct encoder for the one frame on the hot path, `ClientFrame { request_id,
 * publish }`: one size pass, one allocation, no reflection. It writes
 * exactly the bytes the generated code (protobuf-es `toBinary`) writes — a
 * unit test checks that on random publishes, and fails when `Publish` gains
 * a field this file does not know, so the generated schema stays the
 * single source of truth. Everything else goes through the generated code.
 */
import type { AckOk, Delivery, Message, Publish, PublishOk, RoomSeq } from "./gen/roomq_pb.js";

const encoder = new TextEncoder();

/** The field numbers of `Publish` this encoder writes (checked by a test against the schema). */
export const PUBLISH_FIELDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] as const;

/** The field numbers of `Ack` this encoder writes (checked by a test against the schema). */
export const ACK_FIELDS = [1, 2, 3, 4] as const;

// Frames are cut from shared slabs: a small `new Uint8Array(n)` has a
// backing store of its own, which costs more to make and to collect than
// the frame costs to encode. A slab's bytes are never handed out twice, so
// a frame stays valid however long the WebSocket keeps it.
const SLAB_BYTES = 64 * 1024;
let slab = new Uint8Array(0);
let slabAt = 0;

function alloc(size: number): Uint8Array {
  if (size > SLAB_BYTES / 8) return new Uint8Array(size);
  if (slabAt + size > slab.length) {
    slab = new Uint8Array(SLAB_BYTES);
    slabAt = 0;
  }
  const out = slab.subarray(slabAt, slabAt + size);
  slabAt += size;
  return out;
}

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

/** A uint64 the caller gives as a number (below 2^53) or a bigint. */
function u64Size(v: number | bigint): number {
  return typeof v === "number" ? varintSize(v) : bigVarintSize(v);
}

class Out {
  readonly buf: Uint8Array;
  pos = 0;
  constructor(size: number) {
    this.buf = alloc(size);
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
  u64(v: number | bigint): void {
    if (typeof v === "number") this.varint(v);
    else this.bigVarint(v);
  }
  string(s: string, len: number): void {
    this.varint(len);
    if (len === s.length) {
      // ASCII: as many bytes as UTF-16 units, each its own byte.
      const buf = this.buf;
      let at = this.pos;
      for (let i = 0; i < len; i++) buf[at++] = s.charCodeAt(i);
      this.pos = at;
      return;
    }
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.pos, this.pos + len));
    this.pos += written ?? len;
  }
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

const EMPTY_BYTES = new Uint8Array(0);

const strField = (s: string) => {
  const len = utf8Length(s);
  return 1 + varintSize(len) + len;
};
const bytesField = (b: Uint8Array) => 1 + varintSize(b.length) + b.length;

/** The size of `Publish` as protobuf bytes. */
function publishSize(p: Publish, headerSizes: number[] | undefined): number {
  let n = 0;
  const { rooms, exceptRooms, exceptSessions } = p;
  for (let i = 0; i < rooms.length; i++) n += strField(rooms[i] ?? "");
  if (p.event !== "") n += strField(p.event);
  if (p.payload.length > 0) n += bytesField(p.payload);
  if (headerSizes) {
    for (const [k, v] of Object.entries(p.headers)) {
      const entry = strField(k) + strField(v);
      headerSizes.push(entry);
      n += 1 + varintSize(entry) + entry;
    }
  }
  if (p.dedupId.length > 0) n += bytesField(p.dedupId);
  if (p.exceptSelf) n += 2;
  if (p.expectedLastSeq !== undefined) n += 1 + bigVarintSize(p.expectedLastSeq);
  if (p.key !== "") n += strField(p.key);
  if (p.ttlMs !== 0n) n += 1 + bigVarintSize(p.ttlMs);
  if (p.deliverAtMs !== 0n) n += 1 + bigVarintSize(p.deliverAtMs);
  if (p.delayMs !== 0n) n += 1 + bigVarintSize(p.delayMs);
  if (p.volatile) n += 2;
  for (let i = 0; i < exceptRooms.length; i++) n += strField(exceptRooms[i] ?? "");
  for (let i = 0; i < exceptSessions.length; i++) n += bytesField(exceptSessions[i] ?? EMPTY_BYTES);
  return n;
}

function writeString(out: Out, tag: number, s: string): void {
  out.byte(tag);
  out.string(s, utf8Length(s));
}

function hasKeys(o: object): boolean {
  for (const _ in o) return true;
  return false;
}

/** `ClientFrame { request_id: requestId, publish: p }` as bytes (a number id must be below 2^53). */
export function encodePublishFrame(requestId: bigint | number, p: Publish): Uint8Array {
  const headerSizes: number[] | undefined = hasKeys(p.headers) ? [] : undefined;
  const body = publishSize(p, headerSizes);
  const hasId = requestId !== 0n && requestId !== 0;
  const size = (hasId ? 1 + u64Size(requestId) : 0) + 1 + varintSize(body) + body;
  const out = new Out(size);
  if (hasId) {
    out.byte(0x08);
    out.u64(requestId);
  }
  out.byte(0x2a); // field 5, length-delimited
  out.varint(body);
  // Indexed loops: for-of over a frozen array (the shared empty lists) takes the slow iterator path.
  for (let i = 0; i < p.rooms.length; i++) writeString(out, 0x0a, p.rooms[i] ?? "");
  if (p.event !== "") writeString(out, 0x12, p.event);
  if (p.payload.length > 0) {
    out.byte(0x1a);
    out.bytes(p.payload);
  }
  if (headerSizes) {
    let h = 0;
    for (const [k, v] of Object.entries(p.headers)) {
      out.byte(0x22);
      out.varint(headerSizes[h++] ?? 0);
      writeString(out, 0x0a, k);
      writeString(out, 0x12, v);
    }
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
  for (let i = 0; i < p.exceptRooms.length; i++) writeString(out, 0x6a, p.exceptRooms[i] ?? "");
  for (let i = 0; i < p.exceptSessions.length; i++) {
    const s = p.exceptSessions[i] ?? EMPTY_BYTES;
    out.byte(0x72);
    out.bytes(s);
  }
  return out.pos === size ? out.buf : out.buf.subarray(0, out.pos);
}

/** The parts of an `Ack` (seqs as numbers, below 2^53). */
export interface AckParts {
  room: string;
  subscription: string;
  seqs: readonly number[];
  upTo: number;
}

/** `ClientFrame { request_id: requestId, ack: a }` as bytes: what the generated code writes (seqs packed). */
export function encodeAckFrame(requestId: number, a: AckParts): Uint8Array {
  let seqBytes = 0;
  for (let i = 0; i < a.seqs.length; i++) seqBytes += varintSize(a.seqs[i] ?? 0);
  let body = 0;
  if (a.room !== "") body += strField(a.room);
  if (a.subscription !== "") body += strField(a.subscription);
  if (a.seqs.length > 0) body += 1 + varintSize(seqBytes) + seqBytes;
  if (a.upTo !== 0) body += 1 + varintSize(a.upTo);
  const size = (requestId !== 0 ? 1 + varintSize(requestId) : 0) + 1 + varintSize(body) + body;
  const out = new Out(size);
  if (requestId !== 0) {
    out.byte(0x08);
    out.varint(requestId);
  }
  out.byte(0x32); // field 6, length-delimited
  out.varint(body);
  if (a.room !== "") writeString(out, 0x0a, a.room);
  if (a.subscription !== "") writeString(out, 0x12, a.subscription);
  if (a.seqs.length > 0) {
    out.byte(0x1a);
    out.varint(seqBytes);
    for (let i = 0; i < a.seqs.length; i++) out.varint(a.seqs[i] ?? 0);
  }
  if (a.upTo !== 0) {
    out.byte(0x20);
    out.varint(a.upTo);
  }
  return out.buf;
}

// ---------------------------------------------------------------------------
// The frames a client reads most: delivery pushes, and the replies to
// publishes and acks. `decodeFastFrame` returns the same body as the
// generated decoder for a frame that holds only a request id and one of
// these bodies; for anything else (another body, two bodies, a known field
// with another wire type, bad UTF-8, truncated bytes, a request id past
// 2^53) it returns undefined and the caller uses the generated decoder,
// which decides.

/** The field numbers of `Delivery` and `Message` this decoder reads (checked by a test). */
export const DELIVERY_FIELDS = [1, 2, 3, 4, 5, 6] as const;
export const MESSAGE_FIELDS = [1, 2, 3, 4, 5, 6, 7, 8, 9] as const;
/** The field numbers of `PublishOk`, `RoomSeq` and `AckOk` this decoder reads (checked by a test). */
export const PUBLISH_OK_FIELDS = [1, 2, 3] as const;
export const ROOM_SEQ_FIELDS = [1, 2] as const;
export const ACK_OK_FIELDS = [1] as const;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Thrown inside the decoder to fall back; never escapes it. */
const FALLBACK = new Error("fall back to the generated decoder");

// Room names, subscriptions and events repeat from one frame to the next:
// a short string whose bytes were decoded before is taken from this small
// direct-mapped cache instead of being decoded again.
const CACHE_SLOTS = 256;
const CACHE_MAX_BYTES = 64;
const cachedBytes: Array<Uint8Array | undefined> = new Array<Uint8Array | undefined>(CACHE_SLOTS).fill(undefined);
const cachedText: string[] = new Array<string>(CACHE_SLOTS).fill("");

class In {
  readonly buf: Uint8Array;
  pos: number;
  /** Where the message being read ends (moved in and out for nested messages). */
  end: number;
  constructor(buf: Uint8Array, pos: number, end: number) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }
  /** A varint as a number; only for values below 2^53 (else fall back). */
  varint(): number {
    const buf = this.buf;
    let pos = this.pos;
    if (pos < this.end) {
      const b = buf[pos] ?? 0;
      if (b < 0x80) {
        this.pos = pos + 1;
        return b;
      }
    }
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (pos >= this.end) throw FALLBACK;
      const b = buf[pos++] ?? 0;
      result += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) throw FALLBACK;
        this.pos = pos;
        return result;
      }
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
  /** A uint32 varint (the low 32 bits, as the generated decoder takes them). */
  u32(): number {
    const start = this.pos;
    for (let n = 0; n < 7; n++) {
      if (this.pos >= this.end) throw FALLBACK;
      if ((this.buf[this.pos++] ?? 0) < 0x80) {
        this.pos = start;
        return this.varint() % 4294967296;
      }
    }
    this.pos = start;
    return Number(BigInt.asUintN(32, this.u64()));
  }
  /** A bool varint: whether any bit is set. */
  bool(): boolean {
    let any = 0;
    for (let n = 0; n < 10; n++) {
      if (this.pos >= this.end) throw FALLBACK;
      const b = this.buf[this.pos++] ?? 0;
      any |= b & 0x7f;
      if (b < 0x80) return any !== 0;
    }
    throw FALLBACK;
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
    if (n === 0) return "";
    const buf = this.buf;
    const at = this.pos;
    if (n > CACHE_MAX_BYTES) {
      this.pos += n;
      return decodeStrict(buf.subarray(at, at + n));
    }
    const slot = (n * 31 + (buf[at] ?? 0) * 7 + (buf[at + n - 1] ?? 0) * 3 + (buf[at + (n >> 1)] ?? 0)) & (CACHE_SLOTS - 1);
    const known = cachedBytes[slot];
    if (known !== undefined && known.length === n) {
      let i = 0;
      while (i < n && known[i] === buf[at + i]) i++;
      if (i === n) {
        this.pos += n;
        return cachedText[slot] ?? "";
      }
    }
    const bytes = new Uint8Array(buf.subarray(at, at + n)); // a copy, whatever `buf` is
    const text = decodeStrict(bytes);
    cachedBytes[slot] = bytes;
    cachedText[slot] = text;
    this.pos += n;
    return text;
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
  /** Enters a length-delimited field; returns the end to restore with `leave`. */
  enter(): number {
    const n = this.len();
    const outer = this.end;
    this.end = this.pos + n;
    return outer;
  }
  /** Leaves a nested message entered with `enter` (its bytes must all have been read). */
  leave(outer: number): void {
    this.end = outer;
  }
}

function decodeStrict(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw FALLBACK;
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
      const outer = r.enter();
      let k = "";
      let v = "";
      while (r.pos < r.end) {
        const t = r.varint();
        if (t === 0x0a) k = r.string();
        else if (t === 0x12) v = r.string();
        else r.skip(t & 7);
      }
      r.leave(outer);
      m.headers[k] = v;
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

function readDelivery(r: In): Delivery {
  const d: Delivery = { $typeName: "roomq.v1.Delivery", room: "", subscription: "", attempt: 0, redelivered: false, message: undefined, volatile: false };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = Math.floor(tag / 8);
    const wt = tag & 7;
    if (field === 1 && wt === 2) d.room = r.string();
    else if (field === 2 && wt === 2) d.subscription = r.string();
    else if (field === 3 && wt === 0) d.attempt = r.u32();
    else if (field === 4 && wt === 0) d.redelivered = r.bool();
    else if (field === 5 && wt === 2 && d.message === undefined) {
      const outer = r.enter();
      d.message = readMessage(r);
      r.leave(outer);
    } else if (field === 6 && wt === 0) d.volatile = r.bool();
    else if (field >= 1 && field <= 6) throw FALLBACK;
    else r.skip(wt);
  }
  return d;
}

function readRoomSeq(r: In): RoomSeq {
  const s: RoomSeq = { $typeName: "roomq.v1.RoomSeq", room: "", seq: 0n };
  while (r.pos < r.end) {
    const tag = r.varint();
    if (tag === 0x0a) s.room = r.string();
    else if (tag === 0x10) s.seq = r.u64();
    else if (tag < 0x18) throw FALLBACK;
    else r.skip(tag & 7);
  }
  return s;
}

function readPublishOk(r: In): PublishOk {
  const ok: PublishOk = { $typeName: "roomq.v1.PublishOk", seqs: [], duplicate: false, durability: 0 };
  while (r.pos < r.end) {
    const tag = r.varint();
    if (tag === 0x0a) {
      const outer = r.enter();
      ok.seqs.push(readRoomSeq(r));
      r.leave(outer);
    } else if (tag === 0x10) ok.duplicate = r.bool();
    else if (tag === 0x18) {
      // An enum is an int32: a negative one is ten bytes; let the generated code read those.
      const v = r.varint();
      if (v > 0x7fffffff) throw FALLBACK;
      ok.durability = v;
    } else if (tag < 0x20) throw FALLBACK;
    else r.skip(tag & 7);
  }
  return ok;
}

function readAckOk(r: In): AckOk {
  const ok: AckOk = { $typeName: "roomq.v1.AckOk", nextSeq: 0n };
  while (r.pos < r.end) {
    const tag = r.varint();
    if (tag === 0x08) ok.nextSeq = r.u64();
    else if (tag < 0x10) throw FALLBACK;
    else r.skip(tag & 7);
  }
  return ok;
}

/** A body the direct decoder reads. */
export type FastBody = { case: "delivery"; value: Delivery } | { case: "publishOk"; value: PublishOk } | { case: "ackOk"; value: AckOk };

/** The frame `decodeFastFrame` read last: its request id (0 = a push) and body. */
export interface FastFrame {
  requestId: number;
  body: FastBody;
}

/**
 * A frame holding a request id and a delivery, publish confirmation or ack
 * confirmation, decoded directly; undefined for anything else.
 */
export function decodeFastFrame(bytes: Uint8Array): FastFrame | undefined {
  try {
    const r = new In(bytes, 0, bytes.length);
    let requestId = 0;
    let body: FastBody | undefined;
    while (r.pos < r.end) {
      const tag = r.varint();
      if (tag === 0x08) {
        requestId = r.varint();
        continue;
      }
      if (body !== undefined) return undefined; // a second body: the generated decoder decides
      const outer = r.enter();
      if (tag === 0x4a) body = { case: "delivery", value: readDelivery(r) };
      else if (tag === 0x2a) body = { case: "publishOk", value: readPublishOk(r) };
      else if (tag === 0x32) body = { case: "ackOk", value: readAckOk(r) };
      else return undefined;
      r.leave(outer);
    }
    return body && { requestId, body };
  } catch (e) {
    if (e === FALLBACK) return undefined;
    throw e;
  }
}

/** A push holding only a `Delivery`, decoded directly; undefined for anything else. */
export function decodeDeliveryFrame(bytes: Uint8Array): Delivery | undefined {
  const f = decodeFastFrame(bytes);
  return f && f.requestId === 0 && f.body.case === "delivery" ? f.body.value : undefined;
}
