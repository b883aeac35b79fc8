/**
 * One WebSocket connection to the broker, from handshake to close: request
 * ids, replies matched to requests, pushes handed to a callback, the
 * pending-request budget, and the ping that keeps the link alive and finds
 * a dead one. It does not reconnect: the client makes a new `Connection`.
 */
import { isMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { decodeServerFrame, encodeClientFrame } from "./codec.js";
import { BrokerError, ConnectionLostError, InvalidUseError, ProtocolError, TimeoutError } from "./errors.js";
import { PublishSchema, type ClientFrameSchema, type Limits, type ServerFrame } from "./gen/roomq_pb.js";
import { decodeDeliveryFrame, encodePublishFrame } from "./fastwire.js";
import { uuidToString } from "./ids.js";
import {
  SUBPROTOCOL,
  messageBytes,
  type CloseEventLike,
  type ErrorEventLike,
  type MessageEventLike,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./transport.js";
import { brokerError } from "./wire.js";

export type ClientBody = NonNullable<MessageInitShape<typeof ClientFrameSchema>["body"]>;
export type ServerBody = ServerFrame["body"];
export type ServerCase = NonNullable<ServerBody["case"]>;
export type ReplyOf<C extends ServerCase> = Extract<ServerBody, { case: C }>["value"];
/** A push: a frame with request id 0. */
export type Push = Exclude<ServerBody, { case: undefined }>;

/** Why a connection ended. */
export interface EndReason {
  /** Human-readable. */
  reason: string;
  /** The fatal broker error that ended it, if any. */
  error?: BrokerError;
  /** The WebSocket close code, if the socket closed. */
  closeCode?: number;
}

export interface HandshakeParams {
  namespace: string;
  token: string;
  clientId: string;
  clientName: string;
}

export interface ConnectionOptions {
  url: string;
  WebSocket: WebSocketConstructor;
  handshake: HandshakeParams;
  /** Time for the WebSocket to open and the handshake to be accepted. */
  connectTimeoutMs: number;
  /** Ping period; 0 = a third of the broker's idle timeout (at most 15 s). */
  pingIntervalMs: number;
  /** A connection that receives nothing for this long after a ping is dead. */
  pingTimeoutMs: number;
  /** Called for each push (request id 0). */
  onPush: (push: Push) => void;
  /** Called once when the connection ends, before pending requests fail. */
  onEnd: (end: EndReason) => void;
}

interface Pending {
  resolve: (body: ServerBody) => void;
  reject: (error: Error) => void;
  /** Called with the reply as soon as it is read, before any later frame is handled. */
  onReply: ((body: ServerBody) => void) | undefined;
}

export class Connection {
  readonly sessionId: string;
  readonly sessionIdBytes: Uint8Array;
  readonly resumed: boolean;
  readonly limits: Limits | undefined;
  readonly serverVersion: string;

  private readonly ws: WebSocketLike;
  private readonly options: ConnectionOptions;
  private nextId = 2n;
  private readonly pending = new Map<bigint, Pending>();
  /** Requests waiting for the pending-request budget. */
  private readonly backlog: Array<{ id: bigint; bytes: Uint8Array }> = [];
  private readonly maxPending: number;
  private ended: EndReason | undefined;
  private corked = false;
  private lastReceived = Date.now();
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;

  private constructor(ws: WebSocketLike, options: ConnectionOptions, ok: { sessionId: Uint8Array; resumed: boolean; limits: Limits | undefined; serverVersion: string }) {
    this.ws = ws;
    this.options = options;
    this.sessionIdBytes = ok.sessionId;
    this.sessionId = uuidToString(ok.sessionId);
    this.resumed = ok.resumed;
    this.limits = ok.limits;
    this.serverVersion = ok.serverVersion;
    this.maxPending = Math.max(1, ok.limits?.maxPendingRequests || 1024);
    ws.onmessage = (e: MessageEventLike) => this.received(e.data);
    ws.onclose = (e: CloseEventLike) =>
      this.end({ reason: e.reason ? `connection closed: ${e.reason}` : "connection closed", closeCode: e.code });
    ws.onerror = (e: ErrorEventLike) => this.end({ reason: e.message ? `connection error: ${e.message}` : "connection error" });
    this.startPing();
  }

  /** Opens a WebSocket, sends the handshake and waits for `HandshakeOk`. */
  static open(options: ConnectionOptions): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new options.WebSocket(options.url, SUBPROTOCOL);
      } catch (e) {
        reject(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      // Browsers: ArrayBuffer. The `ws` package (it has `terminate`): its own
      // Buffers, which are Uint8Arrays, saving a copy per message.
      ws.binaryType = typeof (ws as unknown as { terminate?: unknown }).terminate === "function" ? "nodebuffer" : "arraybuffer";
      let settled = false;
      const fail = (error: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          // Closing a socket that never opened may throw; it is gone either way.
        }
        reject(error);
      };
      const timer = setTimeout(() => fail(new TimeoutError(`no handshake reply within ${options.connectTimeoutMs} ms`)), options.connectTimeoutMs);
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) {
          fail(new ProtocolError(`the server did not accept the ${SUBPROTOCOL} subprotocol`));
          return;
        }
        const h = options.handshake;
        ws.send(
          encodeClientFrame({
            requestId: 1n,
            body: { case: "handshake", value: { protocolVersion: 1, namespace: h.namespace, token: h.token, clientId: h.clientId, clientName: h.clientName } },
          }),
        );
      };
      ws.onmessage = (e: MessageEventLike) => {
        const bytes = messageBytes(e.data);
        let frame: ServerFrame;
        try {
          if (!bytes) throw new ProtocolError("a text message where a binary frame was expected");
          frame = decodeServerFrame(bytes);
        } catch (err) {
          fail(err instanceof Error ? err : new ProtocolError(String(err)));
          return;
        }
        const body = frame.body;
        if (body.case === "handshakeOk") {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          const ok = body.value;
          resolve(new Connection(ws, options, { sessionId: ok.sessionId, resumed: ok.resumed, limits: ok.limits, serverVersion: ok.serverVersion }));
        } else if (body.case === "error") {
          fail(brokerError(body.value));
        } else {
          fail(new ProtocolError(`expected HandshakeOk, got ${body.case ?? "an empty frame"}`));
        }
      };
      ws.onerror = (e: ErrorEventLike) => fail(new ConnectionLostError(e.message ? `cannot connect: ${e.message}` : "cannot connect"));
      ws.onclose = (e: CloseEventLike) => fail(new ConnectionLostError(`connection closed during the handshake (code ${e.code})`));
    });
  }

  /** Whether the connection has ended. */
  get isClosed(): boolean {
    return this.ended !== undefined;
  }

  /**
   * Sends a request and resolves with the reply's body of kind `expect`;
   * rejects with a {@link BrokerError} if the broker refuses it, with a
   * {@link ConnectionLostError} if the connection ends first.
   *
   * `onReply` is called with a successful reply synchronously, as soon as
   * the frame is read: before the frames behind it in the same socket read
   * are handled, which the promise's continuation is not (with `ws`, one
   * read hands over many frames in one go). A join's `JoinOk` updates its
   * room there, before the deliveries that follow it.
   */
  async request<C extends ServerCase>(body: ClientBody, expect: C, onReply?: (reply: ReplyOf<C>) => void): Promise<ReplyOf<C>> {
    const hook = onReply && ((b: ServerBody) => {
      if (b.case === expect) onReply(b.value as ReplyOf<C>);
    });
    const reply = await this.send(body, hook);
    if (reply.case === expect) return reply.value as ReplyOf<C>;
    if (reply.case === "error") throw brokerError(reply.value);
    throw new ProtocolError(`expected ${expect}, got ${reply.case ?? "an empty frame"}`);
  }

  /** Closes the connection (no reconnect is implied; the caller decides). */
  close(reason = "closed by the client"): void {
    this.end({ reason });
  }

  /** Requests sent and not yet answered, plus those waiting for the budget. */
  get outstanding(): number {
    return this.pending.size;
  }

  private send(body: ClientBody, onReply?: (body: ServerBody) => void): Promise<ServerBody> {
    if (this.ended) return Promise.reject(new ConnectionLostError(this.ended.reason));
    const id = this.nextId++;
    // Publishes (the hot path) as a ready `Publish` message: the direct encoder.
    const bytes = body.case === "publish" && isMessage(body.value, PublishSchema) ? encodePublishFrame(id, body.value) : encodeClientFrame({ requestId: id, body });
    const max = this.limits?.maxFrameBytes;
    if (max && bytes.length > max) {
      this.nextId--;
      return Promise.reject(new InvalidUseError(`the request is ${bytes.length} bytes, over the broker's max_frame_bytes ${max}`));
    }
    return new Promise<ServerBody>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onReply });
      if (this.pending.size - this.backlog.length > this.maxPending) {
        this.backlog.push({ id, bytes });
      } else {
        this.write(bytes);
      }
    });
  }

  private write(bytes: Uint8Array): void {
    this.cork();
    try {
      this.ws.send(bytes);
    } catch (e) {
      this.end({ reason: `send failed: ${e instanceof Error ? e.message : String(e)}` });
    }
  }

  /**
   * With the `ws` package, frames sent in one turn of the event loop are
   * gathered into one socket write (cork until the microtasks ran), instead
   * of one system call per frame. Browsers batch by themselves.
   */
  private cork(): void {
    if (this.corked) return;
    const socket = (this.ws as unknown as { _socket?: { cork?: () => void; uncork?: () => void } })._socket;
    if (!socket || typeof socket.cork !== "function" || typeof socket.uncork !== "function") return;
    this.corked = true;
    socket.cork();
    queueMicrotask(() => {
      this.corked = false;
      socket.uncork?.();
    });
  }

  private received(data: unknown): void {
    if (this.ended) return;
    this.lastReceived = Date.now();
    const bytes = messageBytes(data);
    // Deliveries (most of what a receiver gets) through the direct decoder.
    const delivery = bytes && decodeDeliveryFrame(bytes);
    if (delivery) {
      this.options.onPush({ case: "delivery", value: delivery });
      return;
    }
    let frame: ServerFrame;
    try {
      if (!bytes) throw new ProtocolError("a text message where a binary frame was expected");
      frame = decodeServerFrame(bytes);
    } catch (e) {
      this.end({ reason: `undecodable frame from the broker: ${e instanceof Error ? e.message : String(e)}` });
      return;
    }
    const body = frame.body;
    if (frame.requestId === 0n) {
      if (body.case === undefined) return; // a body this SDK does not know
      if (body.case === "error" && body.value.fatal) {
        this.end({ reason: `${body.value.name}: ${body.value.message}`, error: brokerError(body.value) });
        return;
      }
      this.options.onPush(body);
      return;
    }
    const waiting = this.pending.get(frame.requestId);
    if (!waiting) return; // a reply to a request the client gave up on
    this.pending.delete(frame.requestId);
    this.releaseBacklog();
    if (body.case === "error" && body.value.fatal) {
      // Fatal errors come with id 0, but be safe: the connection is over.
      waiting.reject(brokerError(body.value));
      this.end({ reason: `${body.value.name}: ${body.value.message}`, error: brokerError(body.value) });
      return;
    }
    if (waiting.onReply) {
      try {
        waiting.onReply(body);
      } catch (e) {
        // The hook is the SDK's own; a failure there must not take the connection down.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
    waiting.resolve(body);
  }

  private releaseBacklog(): void {
    while (this.backlog.length > 0 && this.pending.size - this.backlog.length < this.maxPending) {
      const next = this.backlog.shift();
      if (next && this.pending.has(next.id)) this.write(next.bytes);
    }
  }

  private startPing(): void {
    const idle = Number(this.limits?.idleTimeoutMs ?? 60_000n) || 60_000;
    const every = this.options.pingIntervalMs > 0 ? this.options.pingIntervalMs : Math.min(15_000, Math.floor(idle / 3));
    this.pingTimer = setInterval(() => this.ping(), Math.max(50, every));
  }

  private ping(): void {
    if (this.ended || this.pongTimer) return;
    const sentAt = Date.now();
    this.send({ case: "ping", value: { nonce: BigInt(sentAt) } }).catch(() => undefined);
    this.pongTimer = setTimeout(() => {
      this.pongTimer = undefined;
      if (this.lastReceived < sentAt) this.end({ reason: `no reply to a ping within ${this.options.pingTimeoutMs} ms` });
    }, this.options.pingTimeoutMs);
  }

  private end(reason: EndReason): void {
    if (this.ended) return;
    this.ended = reason;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pongTimer = undefined;
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    // Swallow late error events of a socket being torn down.
    ws.onerror = () => undefined;
    try {
      const terminate = (ws as unknown as { terminate?: () => void }).terminate;
      if (reason.error === undefined && typeof terminate === "function" && reason.reason.startsWith("no reply to a ping")) {
        terminate.call(ws); // `ws`: do not wait for a closing handshake on a dead link
      } else {
        ws.close(1000);
      }
    } catch {
      // Already closed.
    }
    this.options.onEnd(reason);
    const error = reason.error ?? new ConnectionLostError(reason.reason);
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.backlog.length = 0;
    for (const p of pending) p.reject(error instanceof BrokerError ? new ConnectionLostError(reason.reason) : error);
  }
}

