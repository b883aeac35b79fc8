/** Identifiers: dedup ids and session ids (16-byte UUIDs) as bytes and as text. */

/** Random bytes are fetched from the platform's CSPRNG this many at a time (one call per 256 ids). */
const POOL_BYTES = 4096;
let pool = new Uint8Array(0);
let poolAt = 0;

/** `n` random bytes (n ≤ 4096) from the platform's CSPRNG (browsers and Node ≥ 20). */
function randomBytes(n: number): Uint8Array {
  if (poolAt + n > pool.length) {
    pool = new Uint8Array(POOL_BYTES);
    globalThis.crypto.getRandomValues(pool);
    poolAt = 0;
  }
  const out = pool.slice(poolAt, poolAt + n);
  poolAt += n;
  return out;
}

/**
 * A fresh UUID version 7 (time-ordered, RFC 9562) as 16 bytes: the SDK's
 * dedup ids, as the Rust SDK uses.
 */
export function uuidV7(nowMs: number = Date.now()): Uint8Array {
  const b = randomBytes(16);
  let t = Math.max(0, Math.floor(nowMs));
  for (let i = 5; i >= 0; i--) {
    b[i] = t % 256;
    t = Math.floor(t / 256);
  }
  b[6] = 0x70 | ((b[6] ?? 0) & 0x0f);
  b[8] = 0x80 | ((b[8] ?? 0) & 0x3f);
  return b;
}

/** The canonical text form (8-4-4-4-12 lowercase hex) of 16 bytes; hex of any other length. */
export function uuidToString(bytes: Uint8Array): string {
  let hex = "";
  for (const byte of bytes) hex += byte.toString(16).padStart(2, "0");
  if (bytes.length !== 16) return hex;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** 16 bytes from a UUID in text form (dashes optional) or as bytes. Throws on anything else. */
export function uuidBytes(id: string | Uint8Array): Uint8Array {
  if (id instanceof Uint8Array) {
    if (id.length !== 16) throw new TypeError(`a UUID is 16 bytes, got ${id.length}`);
    return id;
  }
  const hex = id.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new TypeError(`not a UUID: ${JSON.stringify(id)}`);
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}
