/**
 * One WebSocket connection to the broker, from handshake to close: request
 * ids, replies matched to requests, pushes handed to a callback, the
 * pending-request budget, and the ping that keeps the link alive and finds
 * a dead one. It does not reconnect: the client makes a new `Connection`.
 */
import { isMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { decodeServerFrame, encodeClientFrame } from "./codec.js";
import { BrokerError, ConnectionLostError, InvalidUseError, ProtocolError, TimeoutError } from "./errors.js";
import { PublishSchema, type AckOk, type ClientFrameSchema, type Limits, type Publish, type ServerFrame } from "./gen/roomq_pb.js";
import { decodeFastFrame, encodeAckFrame, encodePublishFrame, type AckParts } from "./fastwire.js";
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

/** The encoder of one publish, for the id the connection gives it. */
function publishEncoder(p: Publish): (id: number) => Uint8Array {
  return (id) => encodePublishFrame(id, p);
}

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

/** Who waits for a reply. Called as methods (`this` is the object), so one object can be the whole waiter. */
export interface Pending {
  resolve(body: ServerBody): void;
  reject(error: Error): void;
  /** Called with the reply as soon as it is read, before any later frame is handled. */
  onReply: ((body: ServerBody) => void) | undefined;
}

/** The `ws` package's own event API, used when present (no event object per message). */
interface WsEmitter {
  on(event: "message", listener: (data: unknown, isBinary: boolean) => void): unknown;
  removeListener(event: "message", listener: (data: unknown, isBinary: boolean) => void): unknown;
}

function wsEmitter(ws: WebSocketLike): WsEmitter | undefined {
  const w = ws as unknown as { on?: unknown; removeListener?: unknown; terminate?: unknown };
  return typeof w.on === "function" && typeof w.removeListener === "function" && typeof w.terminate === "function" ? (ws as unknown as WsEmitter) : undefined;
}

/** The reply's value if it is of kind `expect`; throws the broker's refusal or a ProtocolError otherwise. */
function expectReply<C extends ServerCase>(reply: ServerBody, expect: C): ReplyOf<C> {
  if (reply.case === expect) return reply.value as ReplyOf<C>;
  if (reply.case === "error") throw brokerError(reply.value);
  throw new ProtocolError(`expected ${expect}, got ${reply.case ?? "an empty frame"}`);
}

export class Connection {
  readonly sessionId: string;
  readonly sessionIdBytes: Uint8Array;
  readonly resumed: boolean;
  readonly limits: Limits | undefined;
  readonly serverVersion: string;

  private readonly ws: WebSocketLike;
  private readonly options: ConnectionOptions;
  /** Request ids are numbers: a connection never comes near 2^53 requests. */
  private nextId = 2;
  private readonly pending = new Map<number, Pending>();
  /** Requests waiting for the pending-request budget. */
  private readonly backlog: Array<{ id: number; bytes: Uint8Array }> = [];
  private readonly maxPending: number;
  private ended: EndReason | undefined;
  private corked = false;
  /** Frames received so far (the ping's liveness check compares it). */
  private receivedCount = 0;
  /** The `ws` message listener, when the socket is a `ws` one. */
  private readonly wsListener: ((data: unknown, isBinary: boolean) => void) | undefined;
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
    const emitter = wsEmitter(ws);
    if (emitter) {
      // `ws`: listen to its own event, which hands over the data without
      // building a MessageEvent per message. A text message is refused as
      // it is with `onmessage` (no bytes).
      ws.onmessage = null;
      this.wsListener = (data: unknown, isBinary: boolean) => this.received(isBinary ? data : undefined);
      emitter.on("message", this.wsListener);
    } else {
      ws.onmessage = (e: MessageEventLike) => this.received(e.data);
    }
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
    // Publishes as a ready `Publish` message: the direct encoder.
    const encode = body.case === "publish" && isMessage(body.value, PublishSchema) ? publishEncoder(body.value) : (id: number) => encodeClientFrame({ requestId: BigInt(id), body });
    const reply = await new Promise<ServerBody>((resolve, reject) => this.send(encode, { resolve, reject, onReply: hook }));
    return expectReply(reply, expect);
  }

  /**
   * Sends a publish without making a promise (the hot path): `waiter.resolve`
   * gets the reply's body (a `publishOk`, or the broker's `error`)
   * synchronously as it is read; `waiter.reject` gets a
   * {@link ConnectionLostError} if the connection ends first, or an
   * {@link InvalidUseError} for a frame over `max_frame_bytes` (never
   * synchronously).
   */
  publish(p: Publish, waiter: Pending): void {
    this.send(publishEncoder(p), waiter);
  }

  /** Sends an `Ack` (encoded directly) and resolves with its `AckOk`. */
  async ack(a: AckParts): Promise<AckOk> {
    const reply = await new Promise<ServerBody>((resolve, reject) => this.send((id) => encodeAckFrame(id, a), { resolve, reject, onReply: undefined }));
    return expectReply(reply, "ackOk");
  }

  /** Closes the connection (no reconnect is implied; the caller decides). */
  close(reason = "closed by the client"): void {
    this.end({ reason });
  }

  /** Requests sent and not yet answered, plus those waiting for the budget. */
  get outstanding(): number {
    return this.pending.size;
  }

  /** Encodes a request with the next id and sends it, or keeps it for the pending-request budget. Fails `p` asynchronously. */
  private send(encode: (id: number) => Uint8Array, p: Pending): void {
    if (this.ended) {
      const error = new ConnectionLostError(this.ended.reason);
      queueMicrotask(() => p.reject(error));
      return;
    }
    const id = this.nextId++;
    let bytes: Uint8Array;
    try {
      bytes = encode(id);
    } catch (e) {
      this.nextId--;
      queueMicrotask(() => p.reject(e instanceof Error ? e : new Error(String(e))));
      return;
    }
    const max = this.limits?.maxFrameBytes;
    if (max && bytes.length > max) {
      this.nextId--;
      const error = new InvalidUseError(`the request is ${bytes.length} bytes, over the broker's max_frame_bytes ${max}`);
      queueMicrotask(() => p.reject(error));
      return;
    }
    this.pending.set(id, p);
    if (this.pending.size - this.backlog.length > this.maxPending) {
      this.backlog.push({ id, bytes });
    } else {
      this.write(bytes);
    }
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
    this.receivedCount++;
    const bytes = messageBytes(data);
    // Deliveries and the confirmations of publishes and acks (most of what
    // a client reads) through the direct decoder; the rest, and anything
    // it declines, through the generated one.
    const fast = bytes && decodeFastFrame(bytes);
    let requestId: number;
    let body: ServerBody;
    if (fast) {
      requestId = fast.requestId;
      body = fast.body;
    } else {
      let frame: ServerFrame;
      try {
        if (!bytes) throw new ProtocolError("a text message where a binary frame was expected");
        frame = decodeServerFrame(bytes);
      } catch (e) {
        this.end({ reason: `undecodable frame from the broker: ${e instanceof Error ? e.message : String(e)}` });
        return;
      }
      // Past 2^53 no request of this connection matches: -1 is none of them.
      requestId = frame.requestId <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(frame.requestId) : -1;
      body = frame.body;
    }
    if (requestId === 0) {
      if (body.case === undefined) return; // a body this SDK does not know
      if (body.case === "error" && body.value.fatal) {
        this.end({ reason: `${body.value.name}: ${body.value.message}`, error: brokerError(body.value) });
        return;
      }
      this.options.onPush(body);
      return;
    }
    const waiting = this.pending.get(requestId);
    if (!waiting) return; // a reply to a request the client gave up on
    this.pending.delete(requestId);
    this.releaseBacklog();
    if (body.case === "error" && body.value.fatal) {
      // Fatal errors come with id 0, but be safe: the connection is over
      // (ended first, as when the request's promise continued later).
      this.end({ reason: `${body.value.name}: ${body.value.message}`, error: brokerError(body.value) });
      waiting.reject(brokerError(body.value));
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
    const before = this.receivedCount;
    this.request({ case: "ping", value: { nonce: BigInt(Date.now()) } }, "pong").catch(() => undefined);
    this.pongTimer = setTimeout(() => {
      this.pongTimer = undefined;
      if (this.receivedCount === before) this.end({ reason: `no reply to a ping within ${this.options.pingTimeoutMs} ms` });
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
    if (this.wsListener) wsEmitter(ws)?.removeListener("message", this.wsListener);
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

