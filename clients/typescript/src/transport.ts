/**
 * The WebSocket the SDK needs: the standard browser API, which the `ws`
 * package implements too. Only these members are used.
 */

/** A message event: `data` is an `ArrayBuffer` (or a `Uint8Array`/`Buffer` from `ws`). */
export interface MessageEventLike {
  readonly data: unknown;
}

/** A close event. */
export interface CloseEventLike {
  readonly code: number;
  readonly reason: string;
}

/** An error event; `ws` sets `message`, browsers say nothing. */
export interface ErrorEventLike {
  readonly message?: string;
}

/**
 * The members of a WebSocket the SDK uses. The handler parameters are
 * typed `never` so that both the DOM's and `ws`'s handler types fit; the
 * SDK reads only the fields of the `...Like` interfaces above.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly protocol: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}

/** A WebSocket class: `globalThis.WebSocket` in browsers, `WebSocket` from `ws` in Node 20. */
export type WebSocketConstructor = new (url: string, protocols: string) => WebSocketLike;

/** The subprotocol the broker requires. */
export const SUBPROTOCOL = "roomq.v1";

/** The bytes of a message event's data, or undefined for text or unknown data. */
export function messageBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data instanceof Uint8Array) {
    // A Node Buffer (from `ws`): view it as a plain Uint8Array, so that the
    // slices taken while decoding are plain views too (cheaper than Buffers).
    return data.constructor === Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (Array.isArray(data) && data.every((c) => c instanceof Uint8Array)) {
    // `ws` with binaryType "fragments".
    const chunks = data as Uint8Array[];
    const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
  return undefined;
}

/** The default WebSocket class, if the platform has one (browsers, Node ≥ 22). */
export function defaultWebSocket(): WebSocketConstructor | undefined {
  const ws = (globalThis as { WebSocket?: unknown }).WebSocket;
  return typeof ws === "function" ? (ws as WebSocketConstructor) : undefined;
}
