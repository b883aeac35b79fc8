/**
 * The client: one live {@link Connection} at a time, replaced after a loss
 * with exponential backoff and full jitter. After each reconnect it joins
 * every room again from its stored cursor, then sends again every publish
 * that was not confirmed, with its original dedup id (see outbox.ts), then
 * the publishes queued while offline.
 *
 * All state is owned by this object and touched only from the event loop:
 * no locks, no shared mutable state between connections.
 */
import { backoffDelay, reconnectPolicy, type ReconnectOptions, type ReconnectPolicy } from "./backoff.js";
import { bytesCodec, type Codec } from "./codec.js";
import { Connection, type EndReason, type Push } from "./connection.js";
import type { GapNotice, Member } from "./delivery.js";
import { Emitter } from "./emitter.js";
import { BrokerError, ClosedError, ConnectionLostError, ErrorCode, OfflineQueueFullError, RoomqError, TimeoutError } from "./errors.js";
import { create } from "@bufbuild/protobuf";
import { PublishSchema, type Limits, type Publish } from "./gen/roomq_pb.js";
import { planJoin, type JoinOptions } from "./join.js";
import { Outbox, type Entry, type OverflowPolicy } from "./outbox.js";
import { planPublish, publishResult, type PublishOptions, type PublishResult } from "./publish.js";
import { Room, memberFromWire, type RoomHost } from "./room.js";
import { defaultWebSocket, type WebSocketConstructor } from "./transport.js";
import { num } from "./wire.js";

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

/** `reconnecting` event. */
export interface ReconnectingInfo {
  /** 1 for the first attempt after a loss. */
  attempt: number;
  delayMs: number;
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

export interface ClientEvents {
  connect: [ConnectInfo];
  disconnect: [DisconnectInfo];
  reconnecting: [ReconnectingInfo];
  recovered: [RecoveredInfo];
  /** A broker error pushed outside any request that no room took, or a room's error without a room listener. */
  error: [RoomqError];
  /** The client closed (by `close()`, a refusal that retrying cannot fix, or the reconnect policy gave up). */
  close: [{ reason: string; error?: RoomqError }];
}

export type ClientState = "connecting" | "connected" | "reconnecting" | "closed";

/** Room information from `client.rooms()`. */
export interface RoomSummary {
  name: string;
  lastSeq: number;
  members: number;
  connectedMembers: number;
}

/** Handshake refusals that retrying cannot fix. */
const FINAL_CODES: ReadonlySet<number> = new Set([
  ErrorCode.UNSUPPORTED_VERSION,
  ErrorCode.INVALID_NAME,
  ErrorCode.UNAUTHENTICATED,
  ErrorCode.PERMISSION_DENIED,
  ErrorCode.NOT_FOUND,
  ErrorCode.KICKED,
]);

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
 * `ws://127.0.0.1:7421/ws`.
 */
export async function connect<T = Uint8Array | string>(url: string, options: ConnectOptions<T> = {}): Promise<Client<T>> {
  const client = new Client<T>(url, options);
  await client.start();
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
  private ready = false;
  private state_: ClientState = "connecting";
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  private readonly connWaiters = new Set<{ resolve: (c: Connection) => void; reject: (e: Error) => void }>();
  private recovering: GapNotice[] | undefined;
  private lastSessionId = "";
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

  /** @internal Opens the first connection. */
  async start(): Promise<void> {
    let conn: Connection;
    try {
      conn = await this.open();
    } catch (e) {
      this.state_ = "closed";
      throw e;
    }
    this.attached(conn, false);
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
      init = create(PublishSchema, planPublish(typeof room === "string" ? [room] : room, event, this.codec.encode(data), options));
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
        const ok = await conn.request({ case: "join", value: plan.join }, "joinOk");
        r.joinedWith(ok);
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

  private open(): Promise<Connection> {
    const o = this.options;
    return Connection.open({
      url: this.url,
      WebSocket: this.WebSocketImpl,
      handshake: { namespace: o.namespace ?? "/", token: o.token ?? "", clientId: o.clientId ?? "", clientName: o.clientName ?? "" },
      connectTimeoutMs: o.connectTimeoutMs ?? 10_000,
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
    this.emit("connect", { sessionId: conn.sessionId, resumed: conn.resumed, reconnected });
    if (!reconnected) {
      this.ready = true;
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
          const ok = await conn.request({ case: "join", value: r.resumeRequest() }, "joinOk");
          r.joinedWith(ok);
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
    this.ready = true;
    const effects = this.outbox.connectedReady();
    info.resent = effects.send.filter((e) => e.sends > 1).length;
    this.apply(effects);
    this.emit("recovered", info);
  }

  /** The connection ended. */
  private lost(end: EndReason): void {
    if (this.conn === undefined) return;
    this.conn = undefined;
    this.ready = false;
    this.recovering = undefined;
    this.apply(this.outbox.disconnected());
    for (const r of this.rooms_.values()) r.disconnected();
    const final = end.error !== undefined && FINAL_CODES.has(end.error.code);
    const willReconnect = this.state_ !== "closed" && this.policy !== undefined && !final;
    const info: DisconnectInfo = { reason: end.reason, willReconnect };
    if (end.error) {
      info.code = end.error.code;
      info.codeName = end.error.codeName;
    }
    if (end.closeCode !== undefined) info.closeCode = end.closeCode;
    this.emit("disconnect", info);
    if (this.state_ === "closed") return;
    if (!willReconnect) {
      this.closeWith(end.reason, end.error);
      return;
    }
    this.state_ = "reconnecting";
    this.scheduleReconnect(0);
  }

  private scheduleReconnect(attempt: number): void {
    const policy = this.policy;
    if (!policy || this.state_ === "closed") return;
    if (attempt >= policy.maxAttempts) {
      this.closeWith(`gave up reconnecting after ${attempt} attempts`);
      return;
    }
    const delayMs = backoffDelay(policy, attempt, Math.random());
    this.emit("reconnecting", { attempt: attempt + 1, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.state_ === "closed") return;
      this.open().then(
        (conn) => this.attached(conn, true),
        (e: unknown) => {
          if (e instanceof BrokerError && FINAL_CODES.has(e.code)) {
            this.closeWith(e.message, e);
            return;
          }
          this.scheduleReconnect(attempt + 1);
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
    const event: { reason: string; error?: RoomqError } = { reason };
    if (error) event.error = error;
    this.emit("close", event);
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
    if (!conn || !this.ready) return; // sent again by connectedReady()
    const out = entry.payload;
    conn.request({ case: "publish", value: out.init }, "publishOk").then(
      (ok) => {
        if (!this.outbox.get(entry.id)) return;
        clearTimeout(out.timer);
        const next = this.outbox.settled(entry.id);
        out.resolve(publishResult(ok, out.init.dedupId));
        this.apply(next);
      },
      (e: unknown) => {
        // A lost connection is handled by `lost` (re-send or fail).
        if (e instanceof ConnectionLostError || !this.outbox.get(entry.id)) return;
        clearTimeout(out.timer);
        const next = this.outbox.settled(entry.id);
        out.reject(e instanceof Error ? e : new RoomqError(String(e)));
        this.apply(next);
      },
    );
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
