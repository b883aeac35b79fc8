/**
 * Bytes on the wire and in payloads.
 *
 * - Frames: one WebSocket binary message is one protobuf `ClientFrame` or
 *   `ServerFrame`, without the TCP length prefix. Encoding goes through the
 *   generated schemas, so proto3 `optional` fields keep explicit presence:
 *   an explicit 0 in `max_deliveries` or `expected_last_seq` is written.
 * - Payloads: a {@link Codec} turns application values into payload bytes
 *   and back. Payloads are opaque bytes to the broker; the codecs here
 *   never alter binary data.
 */
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { ClientFrameSchema, ServerFrameSchema, type ClientFrame, type ServerFrame } from "./gen/roomq_pb.js";

/** Encodes a client frame (request id and body) to the bytes of one WebSocket message. */
export function encodeClientFrame(frame: MessageInitShape<typeof ClientFrameSchema>): Uint8Array {
  return toBinary(ClientFrameSchema, create(ClientFrameSchema, frame));
}

/** Decodes one WebSocket message from the broker. Throws on bytes that are not a `ServerFrame`. */
export function decodeServerFrame(bytes: Uint8Array): ServerFrame {
  return fromBinary(ServerFrameSchema, bytes);
}

/** Decodes a client frame (for tests and tools). */
export function decodeClientFrame(bytes: Uint8Array): ClientFrame {
  return fromBinary(ClientFrameSchema, bytes);
}

/** Turns application values into payload bytes and back. */
export interface Codec<T> {
  encode(value: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

/** The string of UTF-8 bytes (invalid sequences become U+FFFD). */
export function fromUtf8(bytes: Uint8Array): string {
  return utf8Decoder.decode(bytes);
}

/**
 * The default codec: a `Uint8Array` is sent as it is, a string as UTF-8.
 * Received payloads are handed over as `Uint8Array` (see
 * `Delivery.text()` and `Delivery.json()` for the common conversions).
 */
export const bytesCodec: Codec<Uint8Array | string> = {
  encode(value) {
    if (value instanceof Uint8Array) return value;
    if (typeof value === "string") return utf8(value);
    throw new TypeError("bytesCodec sends a Uint8Array or a string; use jsonCodec() for other values");
  },
  decode(bytes) {
    return bytes;
  },
};

/** Strings as UTF-8, both ways. */
export const textCodec: Codec<string> = {
  encode: (value) => utf8(value),
  decode: (bytes) => fromUtf8(bytes),
};

/**
 * JSON values as UTF-8 JSON text. `T` is what the application promises the
 * payloads hold; nothing is checked at run time beyond `JSON.parse`.
 */
export function jsonCodec<T = unknown>(): Codec<T> {
  return {
    encode: (value) => utf8(JSON.stringify(value)),
    decode: (bytes) => JSON.parse(fromUtf8(bytes)) as T,
  };
}
