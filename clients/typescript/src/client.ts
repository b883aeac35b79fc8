/**
 * The client: one live {@link Connection} at a time, replaced after a loss
 * with exponential backoff and full jitter (the first connection is tried
 * with the same backoff). After each reconnect it joins
 * every room again from its stored cursor, then sends again every publish
 * that was not confirmed, with its original dedup id (see outbox.ts), then
 * the publishes queued while offline.
 *
 * All state is owned by this object and touched only from the event loop:
 * no locks, no shared mutable state between connections.
 */
import { backoffDelay, reconnectPolicy, type ReconnectOptions, type ReconnectPolicy } from "./backoff.js";
import { bytesCodec, type Codec } from "./codec.js";
import { Connection, type EndReason, type Pending, type Push, type ServerBody } from "./connection.js";
import type { GapNotice, Member } from "./delivery.js";
import { Emitter } from "./emitter.js";
import { BrokerError, ClosedError, ConnectionLostError, OfflineQueueFullError, ProtocolError, RoomqError, TimeoutError, isRetryable } from "./errors.js";
import type { Limits, Publish } from "./gen/roomq_pb.js";
import { planJoin, type JoinOptions } from "./join.js";
import { Outbox, type Entry, type OverflowPolicy } from "./outbox.js";
import { planPublish, publishMessage, publishResult, type PublishOptions, type PublishResult } from "./publish.js";
import { Room, memberFromWire, type RoomHost } from "./room.js";
import { StatusQueue, type DroppedStatus } from "./status.js";
import { defaultWebSocket, type WebSocketConstructor } from "./transport.js";
import { brokerError, num } from "./wire.js";

export interface ConnectOptions<T> {
  /** The namespace (default `/`). */
  namespace?: string;
  /** The namespace's token, if it is not open. */
  token?: string;
  /** The durable identity: names durable memberships, which survive disconnects and restarts. */
  clientId?: string;
  /** A name for logs and presence. */
  clientName?: string;
  /** The WebSocket class; default `globalThis.WebSocket`. On Node 20 pass `WebSocket` from `ws`. */
  WebSocket?: WebSocketConstructor;
  /** Payload codec (default {@link bytesCodec}: `Uint8Array` or string out, `Uint8Array` in). */
  codec?: Codec<T>;
  /** Reconnect policy, or `false` to close the client when the connection is lost. */
  reconnect?: ReconnectOptions | false;
  /**
   * How long the first connection is tried, with the reconnect policy's
   * backoff: at most `maxAttempts` attempts (the first one included), and
   * no attempt starts after `deadlineMs` (counted from `connect` or
   * `createClient`). Default: `reconnect.maxAttempts` attempts (unlimited
   * unless set) and no deadline; with `reconnect: false`, one attempt.
   * `false`: one attempt. A refusal that trying again cannot fix (see
   * {@link isRetryable}) fails it at once.
   */
  firstConnect?: { maxAttempts?: number; deadlineMs?: number } | false;
  /** Time for one connection attempt, handshake included (ms, default 10,000). */
  connectTimeoutMs?: number;
  /** Ping period (ms); default a third of the broker's idle timeout, at most 15 s. */
  pingIntervalMs?: number;
  /** A link that answers nothing for this long after a ping is dead (ms, default 10,000). */
  pingTimeoutMs?: number;
  /** Publishes that may await their confirmation at once (default 256). */
  publishWindow?: number;
  /** Publishes made while disconnected that may wait: `max` (default 1,000) and what happens past it. */
  offlineQueue?: { max?: number; overflow?: OverflowPolicy };
  /** Default time a publish may take, reconnects included (ms, default 60,000; 0 = no limit). */
  publishTimeoutMs?: number;
  /** Time a join, leave or members request may wait for a connection and its reply (ms, default 30,000). */
  requestTimeoutMs?: number;
  /** Acks are gathered for at most this long before they are sent (ms, default 5). */
  ackDelayMs?: number;
  /** The SDK keeps a held delivery from being redelivered for at most this long (ms, default 300,000). */
  maxHoldMs?: number;
}

/** `connect` event. */
export interface ConnectInfo {
  sessionId: string;
  /** The broker had durable memberships for this client id. */
  resumed: boolean;
  /** False for the first connection. */
  reconnected: boolean;
}

/** `disconnect` event. */
export interface DisconnectInfo {
  reason: string;
  /** The broker's error code, when a fatal error ended the connection. */
  code?: number;
  /** The code's name, e.g. `"IDLE_TIMEOUT"`. */
  codeName?: string;
  /** The WebSocket close code, if the socket closed. */
  closeCode?: number;
  /** Whether the client will try to reconnect. */
  willReconnect: boolean;
}

/** `reconnecting` event: the client waits `delayMs`, then tries to connect. */
export interface ReconnectingInfo {
  /** 1 for the first attempt after a loss (or the first retry of the first connection), then 2, 3, ... */
  attempt: number;
  delayMs: number;
  /** True while trying the first connection (no connection has succeeded yet). */
  initial: boolean;
  /** Why the previous attempt failed (absent before the first attempt after a loss). */
  error?: RoomqError;
}

/** `recovered` event: the state after a reconnect, once every room was joined again. */
export interface RecoveredInfo {
  /** Rooms joined again, with their cursors. */
  resumed: Array<{ room: string; subscription: string; nextSeq: number; lastSeq: number }>;
  /** Rooms that could not be joined again (they are closed). */
  failed: Array<{ room: string; subscription: string; error: RoomqError }>;
  /** Gap notices received while resuming (also emitted as each room's `gap`). */
  gaps: GapNotice[];
  /** Publishes sent again with their original dedup ids. */
  resent: number;
}

/** `close` event: the client closed for good. */
export interface CloseInfo {
  reason: string;
  /** The error that closed it: a refusal that retrying cannot fix, or the last attempt's error when it gave up. */
  error?: RoomqError;
}

export interface ClientEvents {
  connect: [ConnectInfo];
  disconnect: [DisconnectInfo];
  reconnecting: [ReconnectingInfo];
  recovered: [RecoveredInfo];
  /** A broker error pushed outside any request that no room took, or a room's error without a room listener. */
  error: [RoomqError];
  /** The client closed (by `close()`, a refusal that retrying cannot fix, or the reconnect policy gave up). */
  close: [CloseInfo];
}

/**
 * What `client.status()` yields: the client's events `connect`,
 * `disconnect`, `reconnecting`, `recovered` and, last, `close`, each with a
 * `type`; and `dropped` when a slow consumer lost the oldest events.
 */
export type ClientStatus =
  | ({ type: "connect" } & ConnectInfo)
  | ({ type: "disconnect" } & DisconnectInfo)
  | ({ type: "reconnecting" } & ReconnectingInfo)
  | ({ type: "recovered" } & RecoveredInfo)
  | ({ type: "close" } & CloseInfo)
  | DroppedStatus;

/** Status events a `client.status()` iterator keeps by default for a consumer that falls behind. */
const STATUS_BUFFER = 64;

export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";

/** Room information from `client.rooms()`. */
export interface RoomSummary {
  name: string;
  lastSeq: number;
  members: number;
  connectedMembers: number;
}

interface OutgoingPublish {
  init: Publish;
  resolve: (r: PublishResult) => void;
  reject: (e: Error) => void;
  /** A short timeout's own timer; long ones are checked by the client's sweep. */
  timer: ReturnType<typeof setTimeout> | undefined;
  /** When it times out (ms since the epoch; Infinity = never). */
  deadline: number;
  timeoutMs: number;
}

/** Publish timeouts at least this long are checked once a second rather than each with its own timer. */
const SWEPT_TIMEOUT_MS = 2000;

/**
 * Connects to a roomq broker over WebSocket and resolves once the first
 * handshake is accepted. `url` is the broker's `/ws` endpoint, e.g.
 * `ws://127.0.0.1:7421/ws`. A failed attempt is retried with the reconnect
 * backoff (see `firstConnect`); it rejects with the last attempt's error
 * when that gives up, or at once for a refusal that retrying cannot fix.
 */
export async function connect<T = Uint8Array | string>(url: string, options: ConnectOptions<T> = {}): Promise<Client<T>> {
  const client = createClient<T>(url, options);
  await client.ready();
  return client;
}

/**
 * Makes a client and starts connecting, without waiting: the application
 * can watch `client.status()` (or `client.on("reconnecting", ...)`) while
 * the first connection is tried, and `await client.ready()` for it.
 * Joins and publishes made meanwhile wait for the connection as they do
 * during a reconnect.
 */
export function createClient<T = Uint8Array | string>(url: string, options: ConnectOptions<T> = {}): Client<T> {
  const client = new Client<T>(url, options);
  client.start();
  return client;
}

export class Client<T = Uint8Array | string> extends Emitter<ClientEvents> {
  readonly url: string;
  readonly codec: Codec<T>;
  private readonly options: ConnectOptions<T>;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly policy: ReconnectPolicy | undefined;
  private readonly outbox: Outbox<OutgoingPublish>;
  private readonly rooms_ = new RoomTable<Room<T>>();
  private conn: Connection | undefined;
  /** True once the rooms are joined again after a reconnect: publishes may go. */
  private canPublish = false;
  private state_: ClientState = "connecting";
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  private readonly connWaiters = new Set<{ resolve: (c: Connection) => void; reject: (e: Error) => void }>();
  private recovering: GapNotice[] | undefined;
  private lastSessionId = "";
  /** Settles with the first connection; see {@link ready}. */
  private readonly firstConnection: Promise<void>;
  private settleFirst: { resolve: () => void; reject: (e: Error) => void } | undefined;
  /** The open `status()` iterators. */
  private readonly statusQueues = new Set<StatusQueue<ClientStatus>>();
  /** What rooms see of the client. */
  private readonly host: RoomHost<T>;

  /** @internal Use {@link connect}. */
  constructor(url: string, options: ConnectOptions<T>) {
    super();
    this.url = url;
    this.options = options;
    this.codec = options.codec ?? (bytesCodec as unknown as Codec<T>);
    const ws = options.WebSocket ?? defaultWebSocket();
    if (!ws) throw new RoomqError("this platform has no global WebSocket: pass one, e.g. `import WebSocket from \"ws\"` and `connect(url, { WebSocket })`");
    this.WebSocketImpl = ws;
    this.policy = options.reconnect === false ? undefined : reconnectPolicy(options.reconnect);
    this.outbox = new Outbox<OutgoingPublish>({
      window: options.publishWindow ?? 256,
      offlineMax: options.offlineQueue?.max ?? 1000,
      overflow: options.offlineQueue?.overflow ?? "reject-new",
    });
    this.host = {
      codec: this.codec,
      ackDelayMs: options.ackDelayMs ?? 5,
      maxHoldMs: options.maxHoldMs ?? 300_000,
      current: () => this.conn,
      connection: () => this.connection(Date.now() + this.requestTimeout()),
      forget: (room) => {
        if (this.rooms_.get(room.name, room.subscription) === room) this.rooms_.delete(room.name, room.subscription);
      },
      unhandled: (error) => this.emit("error", error),
    };
    this.firstConnection = new Promise<void>((resolve, reject) => (this.settleFirst = { resolve, reject }));
    // Nobody may ever call ready(): its rejection must not be reported as unhandled.
    this.firstConnection.catch(() => undefined);
  }

  /**
   * Resolves once the first connection is up (at once if it was); rejects
   * if the client closed before, with the error that closed it (the last
   * attempt's error when `firstConnect` gave up, or a refusal that
   * retrying cannot fix) or a {@link ClosedError}.
   */
  ready(): Promise<void> {
    return this.firstConnection;
  }

  /**
   * The client's status events as an async iterator: `connect`,
   * `disconnect` (reason, code), `reconnecting` (attempt, delay),
   * `recovered` (resumed memberships, gaps) and, last, `close`; it ends
   * when the client closes. Events before the call are not replayed.
   *
   * Bounded: it keeps at most `max` events (default 64) for a consumer
   * that falls behind; past that the oldest are dropped, and the next
   * event taken is `{ type: "dropped", count }`. `break` out of the loop
   * to stop it.
   */
  status(options: { max?: number } = {}): AsyncIterableIterator<ClientStatus> {
    const queue: StatusQueue<ClientStatus> = new StatusQueue<ClientStatus>(options.max ?? STATUS_BUFFER, () => this.statusQueues.delete(queue));
    if (this.state_ === "closed") queue.end();
    else this.statusQueues.add(queue);
    return queue;
  }

  /** Emits a client event and tells the `status()` iterators. */
  private announce<K extends "connect" | "disconnect" | "reconnecting" | "recovered" | "close">(type: K, info: ClientEvents[K][0]): void {
    this.emit(type, ...([info] as unknown as ClientEvents[K]));
    const status = { type, ...info } as ClientStatus;
    for (const q of this.statusQueues) q.push(status);
  }

  /** connecting → connected ⇄ reconnecting → closed. */
  get state(): ClientState {
    return this.state_;
  }

  /** The current session's id (UUID text), or the last one while disconnected. */
  get sessionId(): string {
    return this.conn?.sessionId ?? this.lastSessionId;
  }

  /** The limits the broker announced on the current connection. */
  get limits(): Limits | undefined {
    return this.conn?.limits;
  }

  get serverVersion(): string {
    return this.conn?.serverVersion ?? "";
  }

  private isOpen(): boolean {
    return this.state_ !== "closed";
  }

  /** Publishes not yet confirmed (in flight, to be re-sent, or queued). */
  get unconfirmed(): number {
    return this.outbox.size;
  }

  /** @internal Starts trying the first connection (see `firstConnect`); `ready()` tells how it ends. */
  start(): void {
    const policy = this.policy ?? reconnectPolicy();
    const o = this.options.firstConnect;
    const maxAttempts = o === false ? 1 : (o?.maxAttempts ?? (this.policy ? policy.maxAttempts : 1));
    const deadline = o !== false && o?.deadlineMs !== undefined ? Date.now() + Math.max(0, o.deadlineMs) : Infinity;
    const attempt = (n: number): void => {
      if (this.state_ === "closed") return;
      const left = deadline - Date.now();
      this.open(Number.isFinite(left) ? Math.max(1, left) : undefined).then(
        (conn) => this.attached(conn, false),
        (e: unknown) => {
          if (this.state_ === "closed") return;
          const error = asRoomqError(e);
          if (!retryableAttempt(e)) {
            this.closeWith(error.message, error);
            return;
          }
          const delayMs = Math.min(backoffDelay(policy, n - 1, Math.random()), Math.max(0, deadline - Date.now()));
          if (n >= Math.max(1, maxAttempts) || Date.now() + delayMs >= deadline) {
            const why = n >= maxAttempts ? `${n} attempt${n === 1 ? "" : "s"}` : "the first-connect deadline";
            this.closeWith(`gave up connecting after ${why}: ${error.message}`, error);
            return;
          }
          this.announce("reconnecting", { attempt: n, delayMs, initial: true, error });
          this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = undefined;
            attempt(n + 1);
          }, delayMs);
        },
      );
    };
    attempt(1);
  }

  // ---- publishing ---------------------------------------------------------

  /**
   * Publishes `data` as `event` to `room` (or several rooms) and resolves
   * once the broker stored it (`durability` says how), with its seq. While
   * disconnected it waits in the offline queue; a publish whose connection
   * is lost before the confirmation is sent again with the same dedup id,
   * so it is stored once.
   */
  publish(room: string | string[], event: string, data: T, options: PublishOptions = {}): Promise<PublishResult> {
    if (this.state_ === "closed") return Promise.reject(new ClosedError("the client is closed"));
    let init: Publish;
    try {
      init = publishMessage(planPublish(typeof room === "string" ? [room] : room, event, this.codec.encode(data), options));
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const timeout = options.timeoutMs ?? this.options.publishTimeoutMs ?? 60_000;
      const out: OutgoingPublish = { init, resolve, reject, timer: undefined, deadline: timeout > 0 ? Date.now() + timeout : Infinity, timeoutMs: timeout };
      const { entry, effects } = this.outbox.submit(out, !init.volatile);
      this.apply(effects);
      if (!this.outbox.get(entry.id)) return; // refused at once
      if (timeout <= 0) return;
      if (timeout < SWEPT_TIMEOUT_MS) out.timer = setTimeout(() => this.expire(entry), timeout);
      else this.startSweep();
    });
  }

  /** Fails a publish that was not confirmed in time. */
  private expire(entry: Entry<OutgoingPublish>): void {
    if (!this.outbox.get(entry.id)) return;
    this.apply(this.outbox.cancel(entry.id));
    this.fail(entry, new TimeoutError(`publish not confirmed within ${entry.payload.timeoutMs} ms; it may or may not have been stored`));
  }

  /** One timer for all long publish timeouts, running while publishes are outstanding. */
  private startSweep(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => {
      if (this.outbox.size === 0) {
        clearInterval(this.sweepTimer);
        this.sweepTimer = undefined;
        return;
      }
      const now = Date.now();
      for (const entry of this.outbox.list()) if (entry.payload.deadline <= now) this.expire(entry);
    }, 1000);
  }

  /** Socket.IO's `socket.to(room)`: a message for the room's other members (`exceptSelf`). */
  to(room: string | string[]): BroadcastOperator<T> {
    return new BroadcastOperator<T>(this, typeof room === "string" ? [room] : room, [], { exceptSelf: true });
  }

  // ---- receiving ----------------------------------------------------------

  /**
   * Joins `room`. With a client id (or `subscription`) the membership is
   * durable: it keeps its cursor while the client is away and resumes from
   * it after every reconnect.
   */
  async join(room: string, options: JoinOptions = {}): Promise<Room<T>> {
    if (this.state_ === "closed") throw new ClosedError("the client is closed");
    const plan = planJoin(room, options, (this.options.clientId ?? "") !== "");
    if (this.rooms_.get(room, plan.label)) throw new RoomqError(`already joined ${JSON.stringify(room)} as ${JSON.stringify(plan.label)}`);
    const r = new Room<T>(this.host, room, plan.label, plan.join, plan.mode, options.autoAck ?? false);
    this.rooms_.set(room, plan.label, r);
    const deadline = Date.now() + this.requestTimeout();
    for (;;) {
      try {
        const conn = await this.connection(deadline);
        // The room takes the JoinOk as it is read, before the deliveries behind it.
        await conn.request({ case: "join", value: plan.join }, "joinOk", (ok) => r.joinedWith(ok, false));
        r.startKeepAlive(options.ackTimeoutMs ?? Number(conn.limits?.ackTimeoutMs ?? 30_000n));
        return r;
      } catch (e) {
        if (e instanceof ConnectionLostError && Date.now() < deadline && this.isOpen()) continue;
        this.rooms_.delete(room, plan.label);
        r.shutdown({ reason: "left", error: e instanceof RoomqError ? e : undefined });
        throw e;
      }
    }
  }

  /** Who is in `room` now. */
  async members(room: string): Promise<Member[]> {
    const conn = await this.connection(Date.now() + this.requestTimeout());
    const ok = await conn.request({ case: "members", value: { room } }, "membersOk");
    return ok.members.map(memberFromWire);
  }

  /** The rooms of this namespace. */
  async rooms(): Promise<RoomSummary[]> {
    const conn = await this.connection(Date.now() + this.requestTimeout());
    const ok = await conn.request({ case: "listRooms", value: {} }, "listRoomsOk");
    return ok.rooms.map((r) => ({ name: r.name, lastSeq: num(r.lastSeq), members: r.members, connectedMembers: r.connectedMembers }));
  }

  /** The rooms joined now. */
  joined(): Room<T>[] {
    return this.rooms_.values();
  }

  /** Closes the client: no reconnect; unconfirmed publishes fail with {@link ClosedError}; rooms end. */
  close(): void {
    this.closeWith("closed by the client");
  }

  // ---- connection life ----------------------------------------------------

  /** One connection attempt; `limitMs` shortens its timeout (the first-connect deadline). */
  private open(limitMs?: number): Promise<Connection> {
    const o = this.options;
    const timeout = o.connectTimeoutMs ?? 10_000;
    return Connection.open({
      url: this.url,
      WebSocket: this.WebSocketImpl,
      handshake: { namespace: o.namespace ?? "/", token: o.token ?? "", clientId: o.clientId ?? "", clientName: o.clientName ?? "" },
      connectTimeoutMs: limitMs === undefined ? timeout : Math.min(timeout, limitMs),
      pingIntervalMs: o.pingIntervalMs ?? 0,
      pingTimeoutMs: o.pingTimeoutMs ?? 10_000,
      onPush: (push) => this.routePush(push),
      onEnd: (end) => this.lost(end),
    });
  }

  /** A connection is up: announce it, resume the rooms, then release the publishes. */
  private attached(conn: Connection, reconnected: boolean): void {
    if (this.state_ === "closed") {
      conn.close();
      return;
    }
    this.conn = conn;
    this.lastSessionId = conn.sessionId;
    this.state_ = "connected";
    for (const w of [...this.connWaiters]) w.resolve(conn);
    this.connWaiters.clear();
    this.settleFirst?.resolve();
    this.settleFirst = undefined;
    this.announce("connect", { sessionId: conn.sessionId, resumed: conn.resumed, reconnected });
    if (!reconnected) {
      this.canPublish = true;
      this.apply(this.outbox.connectedReady());
      return;
    }
    void this.recover(conn);
  }

  private async recover(conn: Connection): Promise<void> {
    this.recovering = [];
    const info: RecoveredInfo = { resumed: [], failed: [], gaps: [], resent: 0 };
    const rooms = this.rooms_.values().filter((r) => r.joined);
    await Promise.all(
      rooms.map(async (r) => {
        try {
          // The room takes the JoinOk as it is read: its `resumed` event comes before the catch-up deliveries.
          await conn.request({ case: "join", value: r.resumeRequest() }, "joinOk", (ok) => r.joinedWith(ok, true));
          info.resumed.push({ room: r.name, subscription: r.subscription, nextSeq: r.info.nextSeq, lastSeq: r.info.lastSeq });
        } catch (e) {
          if (e instanceof ConnectionLostError) return;
          const error = e instanceof RoomqError ? e : new RoomqError(String(e));
          info.failed.push({ room: r.name, subscription: r.subscription, error });
          this.rooms_.delete(r.name, r.subscription);
          r.shutdown({ reason: "resume-failed", error });
        }
      }),
    );
    if (this.conn !== conn) return; // lost again while resuming
    info.gaps = this.recovering;
    this.recovering = undefined;
    this.canPublish = true;
    const effects = this.outbox.connectedReady();
    info.resent = effects.send.filter((e) => e.sends > 1).length;
    this.apply(effects);
    this.announce("recovered", info);
  }

  /** The connection ended. */
  private lost(end: EndReason): void {
    if (this.conn === undefined) return;
    this.conn = undefined;
    this.canPublish = false;
    this.recovering = undefined;
    this.apply(this.outbox.disconnected());
    for (const r of this.rooms_.values()) r.disconnected();
    const final = end.error !== undefined && !isRetryable(end.error);
    const willReconnect = this.state_ !== "closed" && this.policy !== undefined && !final;
    const info: DisconnectInfo = { reason: end.reason, willReconnect };
    if (end.error) {
      info.code = end.error.code;
      info.codeName = end.error.codeName;
    }
    if (end.closeCode !== undefined) info.closeCode = end.closeCode;
    this.announce("disconnect", info);
    if (this.state_ === "closed") return;
    if (!willReconnect) {
      this.closeWith(end.reason, end.error);
      return;
    }
    this.state_ = "reconnecting";
    this.scheduleReconnect(0);
  }

  /** Waits, then tries attempt `attempt + 1` after a loss; `error`: why the previous one failed. */
  private scheduleReconnect(attempt: number, error?: RoomqError): void {
    const policy = this.policy;
    if (!policy || this.state_ === "closed") return;
    if (attempt >= policy.maxAttempts) {
      this.closeWith(`gave up reconnecting after ${attempt} attempts${error ? `: ${error.message}` : ""}`, error);
      return;
    }
    const delayMs = backoffDelay(policy, attempt, Math.random());
    const info: ReconnectingInfo = { attempt: attempt + 1, delayMs, initial: false };
    if (error) info.error = error;
    this.announce("reconnecting", info);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.state_ === "closed") return;
      this.open().then(
        (conn) => this.attached(conn, true),
        (e: unknown) => {
          if (this.state_ === "closed") return;
          const error = asRoomqError(e);
          if (!retryableAttempt(e)) {
            this.closeWith(error.message, error);
            return;
          }
          this.scheduleReconnect(attempt + 1, error);
        },
      );
    }, delayMs);
  }

  private closeWith(reason: string, error?: RoomqError): void {
    if (this.state_ === "closed") return;
    this.state_ = "closed";
    clearTimeout(this.reconnectTimer);
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    const conn = this.conn;
    this.conn = undefined;
    conn?.close(reason);
    for (const entry of this.outbox.drain()) this.fail(entry, new ClosedError(`the client closed: ${reason}`));
    for (const r of this.rooms_.values()) r.shutdown({ reason: "client-closed" });
    this.rooms_.clear();
    for (const w of this.connWaiters) w.reject(new ClosedError(`the client closed: ${reason}`));
    this.connWaiters.clear();
    this.settleFirst?.reject(error ?? new ClosedError(`the client closed: ${reason}`));
    this.settleFirst = undefined;
    const event: CloseInfo = { reason };
    if (error) event.error = error;
    this.announce("close", event);
    for (const q of this.statusQueues) q.end();
    this.statusQueues.clear();
  }

  /** The connection, waiting for one until `deadline`. */
  private connection(deadline: number): Promise<Connection> {
    if (this.conn) return Promise.resolve(this.conn);
    if (this.state_ === "closed") return Promise.reject(new ClosedError("the client is closed"));
    return new Promise<Connection>((resolve, reject) => {
      const waiter = {
        resolve: (c: Connection) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.connWaiters.delete(waiter);
        reject(new TimeoutError("not connected in time"));
      }, Math.max(0, deadline - Date.now()));
      this.connWaiters.add(waiter);
    });
  }

  private requestTimeout(): number {
    return this.options.requestTimeoutMs ?? 30_000;
  }

  // ---- publishes through the outbox ----------------------------------------

  private apply(effects: { send: Entry<OutgoingPublish>[]; fail: Array<{ entry: Entry<OutgoingPublish>; reason: string }> }): void {
    for (const { entry, reason } of effects.fail) {
      const error =
        reason === "offline-queue-full"
          ? new OfflineQueueFullError("the offline queue is full")
          : reason === "not-connected"
            ? new ConnectionLostError("not connected: a volatile publish is not queued")
            : new ConnectionLostError("the connection was lost before the broker answered this volatile publish");
      this.fail(entry, error);
    }
    for (const entry of effects.send) this.sendPublish(entry);
  }

  private sendPublish(entry: Entry<OutgoingPublish>): void {
    const conn = this.conn;
    if (!conn || !this.canPublish) return; // sent again by connectedReady()
    const out = entry.payload;
    // No promise per request: the reply is handled as it is read, so the
    // publishes it lets out of the window go in the same socket write.
    const waiter: PublishWaiter = { client: this as Client<unknown>, entry, resolve: publishReplied, reject: publishRejected, onReply: undefined };
    conn.publish(out.init, waiter);
  }

  /** @internal The broker answered a publish. */
  publishReplied(entry: Entry<OutgoingPublish>, reply: ServerBody): void {
    if (reply.case !== "publishOk") {
      this.publishFailed(entry, reply.case === "error" ? brokerError(reply.value) : new ProtocolError(`expected publishOk, got ${reply.case ?? "an empty frame"}`));
      return;
    }
    if (!this.outbox.get(entry.id)) return;
    const out = entry.payload;
    clearTimeout(out.timer);
    const next = this.outbox.settled(entry.id);
    out.resolve(publishResult(reply.value, out.init.dedupId));
    this.apply(next);
  }

  /** @internal A publish failed before an answer (see `Connection.publish`), or was refused. */
  publishFailed(entry: Entry<OutgoingPublish>, e: Error): void {
    // A lost connection is handled by `lost` (re-send or fail).
    if (e instanceof ConnectionLostError || !this.outbox.get(entry.id)) return;
    const out = entry.payload;
    clearTimeout(out.timer);
    const next = this.outbox.settled(entry.id);
    out.reject(e);
    this.apply(next);
  }

  private fail(entry: Entry<OutgoingPublish>, error: Error): void {
    clearTimeout(entry.payload.timer);
    entry.payload.reject(error);
  }

  // ---- pushes -------------------------------------------------------------

  private routePush(push: Push): void {
    switch (push.case) {
      case "delivery":
        this.rooms_.get(push.value.room, push.value.subscription)?.offer(push.value);
        return;
      case "gap": {
        const g = push.value;
        const r = this.rooms_.get(g.room, g.subscription);
        if (this.recovering) this.recovering.push({ room: g.room, subscription: g.subscription, fromSeq: num(g.fromSeq), toSeq: num(g.toSeq), missed: num(g.missed) });
        r?.gap(g);
        return;
      }
      case "presence":
        this.rooms_.get(push.value.room, push.value.subscription)?.presence(push.value);
        return;
      case "error": {
        const error = new BrokerError(push.value.code, push.value.name, push.value.message, push.value.fatal);
        const { room, subscription } = membershipOf(push.value);
        const r = room !== undefined ? this.rooms_.get(room, subscription ?? "") : undefined;
        if (r && (error.is("MEMBERSHIP_TAKEN_OVER") || error.is("NOT_FOUND"))) {
          this.rooms_.delete(r.name, r.subscription);
          r.shutdown({ reason: error.is("NOT_FOUND") ? "deleted" : "taken-over", error });
          return;
        }
        this.emit("error", error);
        return;
      }
      default:
        // Replies never arrive with request id 0; other bodies are ignored.
        return;
    }
  }
}

/**
 * The waiter of one publish on a connection: one object, whose methods are
 * shared (no closures per publish).
 */
interface PublishWaiter extends Pending {
  readonly client: Client<unknown>;
  readonly entry: Entry<OutgoingPublish>;
}

function publishReplied(this: PublishWaiter, reply: ServerBody): void {
  this.client.publishReplied(this.entry, reply);
}

function publishRejected(this: PublishWaiter, error: Error): void {
  this.client.publishFailed(this.entry, error);
}

/**
 * Whether a failed connection attempt is worth another: not after a refusal
 * that retrying cannot fix, nor after an error that is not the SDK's (the
 * WebSocket class refused the URL).
 */
function retryableAttempt(e: unknown): boolean {
  if (e instanceof BrokerError) return isRetryable(e);
  return e instanceof RoomqError;
}

function asRoomqError(e: unknown): RoomqError {
  if (e instanceof RoomqError) return e;
  const error = new RoomqError(e instanceof Error ? e.message : String(e));
  (error as { cause?: unknown }).cause = e;
  return error;
}

/** The structured membership fields of a pushed error, where the broker sends them. */
function membershipOf(e: object): { room?: string; subscription?: string } {
  const f = e as { room?: unknown; subscription?: unknown };
  const out: { room?: string; subscription?: string } = {};
  if (typeof f.room === "string" && f.room !== "") out.room = f.room;
  if (typeof f.subscription === "string") out.subscription = f.subscription;
  return out;
}

/** Rooms by (room, subscription label): the handle every push names. */
class RoomTable<R> {
  private readonly byRoom = new Map<string, Map<string, R>>();

  get(room: string, subscription: string): R | undefined {
    return this.byRoom.get(room)?.get(subscription);
  }

  set(room: string, subscription: string, value: R): void {
    let inner = this.byRoom.get(room);
    if (!inner) this.byRoom.set(room, (inner = new Map()));
    inner.set(subscription, value);
  }

  delete(room: string, subscription: string): void {
    const inner = this.byRoom.get(room);
    if (!inner) return;
    inner.delete(subscription);
    if (inner.size === 0) this.byRoom.delete(room);
  }

  values(): R[] {
    const out: R[] = [];
    for (const inner of this.byRoom.values()) out.push(...inner.values());
    return out;
  }

  clear(): void {
    this.byRoom.clear();
  }
}

/**
 * Socket.IO-flavoured publishing: `client.to("general").except("muted").emit("chat message", data)`.
 * Like Socket.IO's `socket.to(...)`, the message is not delivered to this
 * client itself (`exceptSelf`); `.volatile` makes it unstored.
 */
export class BroadcastOperator<T> {
  private readonly client: Client<T>;
  private readonly rooms: string[];
  private readonly exceptRooms: string[];
  private readonly flags: PublishOptions;

  /** @internal */
  constructor(client: Client<T>, rooms: string[], exceptRooms: string[], flags: PublishOptions) {
    this.client = client;
    this.rooms = rooms;
    this.exceptRooms = exceptRooms;
    this.flags = flags;
  }

  /** Adds rooms. */
  to(room: string | string[]): BroadcastOperator<T> {
    return new BroadcastOperator(this.client, [...this.rooms, ...(typeof room === "string" ? [room] : room)], this.exceptRooms, this.flags);
  }

  /** Not to sessions that are members of `room`. */
  except(room: string | string[]): BroadcastOperator<T> {
    return new BroadcastOperator(this.client, this.rooms, [...this.exceptRooms, ...(typeof room === "string" ? [room] : room)], this.flags);
  }

  /** Not stored; only to members joined now; never re-sent. */
  get volatile(): BroadcastOperator<T> {
    return new BroadcastOperator(this.client, this.rooms, this.exceptRooms, { ...this.flags, volatile: true });
  }

  /** Publishes; resolves with the broker's confirmation. */
  emit(event: string, data: T, options: PublishOptions = {}): Promise<PublishResult> {
    const exceptRooms = [...this.exceptRooms, ...(options.exceptRooms ?? [])];
    return this.client.publish(this.rooms, event, data, { ...this.flags, ...options, exceptRooms });
  }
}
