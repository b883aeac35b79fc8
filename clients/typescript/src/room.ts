/**
 * A membership of a room: `client.join(room)` returns a {@link Room}.
 * Deliveries pass through the subscription's {@link Filter} (ordered mode
 * and friends), then go to the `on(event)` handlers, or, when no handler
 * takes their event, to `for await (const d of room)`. Acks are coalesced
 * (see acks.ts); held deliveries are kept from expiring by `InProgress`.
 */
import { planAcks } from "./acks.js";
import type { Codec } from "./codec.js";
import type { Connection } from "./connection.js";
import { Delivery, type GapNotice, type Member, type PresenceChange } from "./delivery.js";
import { BrokerError, ConnectionLostError, RoomqError } from "./errors.js";
import { Filter, type FilterMode } from "./filter.js";
import type { Delivery as WireDelivery, Gap, Presence, PresenceEvent } from "./gen/roomq_pb.js";
import { PresenceEvent_Kind } from "./gen/roomq_pb.js";
import { uuidToString } from "./ids.js";
import { resumeJoin, type JoinInit } from "./join.js";
import { num } from "./wire.js";

/** What a room needs from its client. */
export interface RoomHost<T> {
  readonly codec: Codec<T>;
  readonly ackDelayMs: number;
  readonly maxHoldMs: number;
  /** The current connection, if up. */
  current(): Connection | undefined;
  /** The connection, waiting for one within the request timeout. */
  connection(): Promise<Connection>;
  /** The room is done: stop routing to it and do not resume it. */
  forget(room: Room<T>): void;
  /** Errors no room listener took. */
  unhandled(error: RoomqError): void;
}

/** Why a room stopped. */
export interface RoomClosed {
  reason: "left" | "client-closed" | "taken-over" | "deleted" | "resume-failed";
  error?: RoomqError;
}

/**
 * `room.on("resumed", ...)`: the membership was joined again after a
 * reconnect. Emitted as the broker's answer is read, before any delivery
 * that follows it.
 */
export interface RoomResumed {
  room: string;
  subscription: string;
  /** Durable: it continues from its stored cursor. Ephemeral: it starts again from now (what was published while away is not delivered). */
  durable: boolean;
  /** The membership's cursor: its lowest unacknowledged seq; the catch-up starts there. */
  nextSeq: number;
  /**
   * The room's last seq when it was joined again: what was stored up to it
   * (published while away, or not acknowledged before) is the catch-up,
   * delivered with `delivery.catchUp`; later seqs are live.
   */
  lastSeq: number;
}

/** What `join` learned. */
export interface JoinInfo {
  /** The durable name the membership resolved to ("" if ephemeral; the group's name for a group). */
  durableName: string;
  durable: boolean;
  /** Its lowest unacknowledged seq. */
  nextSeq: number;
  /** The room's last stored seq (0 = empty). */
  lastSeq: number;
}

type Handler<T> = (data: T, delivery: Delivery<T>) => void | Promise<void>;
type AnyHandler<T> = (event: string, data: T, delivery: Delivery<T>) => void | Promise<void>;

/** Volatile deliveries that may wait for `for await` (stored ones are bounded by max_in_flight). */
const EXTRA_QUEUE = 1024;

/** Notices of one kind kept for the first listener of that kind. */
const EARLY_NOTICES = 1000;

const RESERVED = new Set(["presence", "gap", "error", "closed", "resumed"]);

export function memberFromWire(p: Presence | undefined): Member {
  return {
    sessionId: p ? uuidToString(p.sessionId) : "",
    clientId: p?.clientId ?? "",
    clientName: p?.clientName ?? "",
    subscription: p?.subscription ?? "",
    durable: p?.durable ?? false,
    group: p?.group ?? "",
  };
}

export class Room<T> implements AsyncIterable<Delivery<T>> {
  /** The room's name. */
  readonly name: string;
  /** The subscription handle (the `subscription` option, "" by default). */
  readonly subscription: string;
  /** The ordered / unordered / shared filter mode. */
  readonly mode: FilterMode;
  /** What the first join answered (updated on every resume). */
  info: JoinInfo = { durableName: "", durable: false, nextSeq: 0, lastSeq: 0 };

  /** @internal */ readonly join: JoinInit;
  /** @internal */ joined = false;
  private readonly host: RoomHost<T>;
  private readonly autoAck: boolean;
  private readonly filter: Filter;
  private readonly handlers = new Map<string, Set<Handler<T>>>();
  private readonly anyHandlers = new Set<AnyHandler<T>>();
  private readonly presenceHandlers = new Set<(change: PresenceChange) => void>();
  private readonly gapHandlers = new Set<(gap: GapNotice) => void>();
  private readonly errorHandlers = new Set<(error: RoomqError, delivery?: Delivery<T>) => void>();
  private readonly closedHandlers = new Set<(closed: RoomClosed) => void>();
  private readonly resumedHandlers = new Set<(resumed: RoomResumed) => void>();
  /** The room's last seq in the latest JoinOk: deliveries up to it are catch-up. */
  private catchUpTo = 0;
  /** Deliveries no handler took, for `for await`. */
  private readonly queue: Delivery<T>[] = [];
  private readonly waiters: Array<(d: IteratorResult<Delivery<T>>) => void> = [];
  /** Seqs acknowledged since the last flush, and the `ack()` promises waiting for it (auto-acks have none). */
  private ackSeqs: number[] = [];
  private ackWaiters: Array<() => void> = [];
  /** Volatile deliveries waiting in `queue`, and those dropped because too many waited. */
  private queuedVolatile = 0;
  private droppedVolatile = 0;
  /** Acks the broker refused. */
  private ackFailures = 0;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private keepAliveTimer: ReturnType<typeof setInterval> | undefined;
  private closedWith: RoomClosed | undefined;
  /**
   * Notices that arrived before any listener of their kind. The broker
   * sends a membership's gap right after its JoinOk, and `ws` hands over
   * every message of one socket read in one go, before the join's promise
   * continues; so a gap (and the first deliveries) can reach the room
   * before the application could add a listener. They go to the first
   * listener added.
   */
  private readonly earlyGaps: GapNotice[] = [];
  private readonly earlyPresence: PresenceChange[] = [];

  /** @internal Made by `client.join`. */
  constructor(host: RoomHost<T>, name: string, label: string, join: JoinInit, mode: FilterMode, autoAck: boolean) {
    this.host = host;
    this.name = name;
    this.subscription = label;
    this.join = join;
    this.mode = mode;
    this.autoAck = autoAck;
    this.filter = new Filter(mode);
  }

  /** Acknowledgements the broker refused so far (each also reported to the "error" listeners). */
  get refusedAcks(): number {
    return this.ackFailures;
  }

  /** Volatile deliveries dropped because more than 1,024 waited for `for await`. */
  get dropped(): number {
    return this.droppedVolatile;
  }

  /** Whether the room was left or closed. */
  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Someone joined or left (with `presence: true`). */
  on(event: "presence", listener: (change: PresenceChange) => void): this;
  /** The broker moved the membership past messages it never got (retention, purge). */
  on(event: "gap", listener: (gap: GapNotice) => void): this;
  /** A handler threw, a payload could not be decoded, or an ack failed. */
  on(event: "error", listener: (error: RoomqError, delivery?: Delivery<T>) => void): this;
  /** The room stopped: left, taken over by another session, deleted, or the client closed. */
  on(event: "closed", listener: (closed: RoomClosed) => void): this;
  /** The membership was joined again after a reconnect (before its catch-up deliveries). */
  on(event: "resumed", listener: (resumed: RoomResumed) => void): this;
  /** Messages of this event (use `onAny` for events named like the reserved ones). */
  on(event: string, listener: Handler<T>): this;
  on(event: string, listener: Handler<T> | ((arg: never, d?: never) => void)): this {
    switch (event) {
      case "presence": {
        const h = listener as (change: PresenceChange) => void;
        this.presenceHandlers.add(h);
        for (const p of this.earlyPresence.splice(0)) this.guard(() => h(p));
        break;
      }
      case "gap": {
        const h = listener as (gap: GapNotice) => void;
        this.gapHandlers.add(h);
        for (const g of this.earlyGaps.splice(0)) this.guard(() => h(g));
        break;
      }
      case "error":
        this.errorHandlers.add(listener as (error: RoomqError, delivery?: Delivery<T>) => void);
        break;
      case "closed":
        this.closedHandlers.add(listener as (closed: RoomClosed) => void);
        break;
      case "resumed":
        this.resumedHandlers.add(listener as (resumed: RoomResumed) => void);
        break;
      default: {
        let set = this.handlers.get(event);
        if (!set) this.handlers.set(event, (set = new Set()));
        set.add(listener as Handler<T>);
        this.drainQueueTo(event);
      }
    }
    return this;
  }

  /** Removes a listener added with `on`. */
  off(event: string, listener: (...args: never[]) => unknown): this {
    const fn = listener as never;
    if (event === "presence") this.presenceHandlers.delete(fn);
    else if (event === "gap") this.gapHandlers.delete(fn);
    else if (event === "error") this.errorHandlers.delete(fn);
    else if (event === "closed") this.closedHandlers.delete(fn);
    else if (event === "resumed") this.resumedHandlers.delete(fn);
    else this.handlers.get(event)?.delete(fn);
    return this;
  }

  /** Every message, whatever its event. */
  onAny(listener: AnyHandler<T>): this {
    this.anyHandlers.add(listener);
    this.queuedVolatile = 0;
    for (const d of this.queue.splice(0)) this.dispatch(d);
    return this;
  }

  offAny(listener: AnyHandler<T>): this {
    this.anyHandlers.delete(listener);
    return this;
  }

  /** Who is in the room now: one entry per joined session (per consumer of a group). */
  async members(): Promise<Member[]> {
    const conn = await this.host.connection();
    const ok = await conn.request({ case: "members", value: { room: this.name } }, "membersOk");
    return ok.members.map(memberFromWire);
  }

  /** Leaves the room; a durable membership keeps its cursor unless `forget`. */
  async leave(options: { forget?: boolean } = {}): Promise<void> {
    if (this.closedWith) return;
    this.host.forget(this);
    this.shutdown({ reason: "left" });
    const conn = this.host.current();
    if (!conn) return;
    try {
      await conn.request({ case: "leave", value: { room: this.name, subscription: this.subscription, forget: options.forget ?? false } }, "leaveOk");
    } catch (e) {
      if (e instanceof ConnectionLostError) return; // released with the connection anyway
      if (e instanceof BrokerError && e.is("NOT_JOINED")) return;
      throw e;
    }
  }

  /** Deliveries that no `on` handler takes, in order. Ends when the room closes. */
  [Symbol.asyncIterator](): AsyncIterator<Delivery<T>> {
    return {
      next: () => {
        const d = this.queue.shift();
        if (d) {
          if (d.volatile) this.queuedVolatile--;
          return Promise.resolve(this.taken(d));
        }
        if (this.closedWith) return Promise.resolve({ done: true, value: undefined });
        return new Promise((resolve) => this.waiters.push(resolve));
      },
      return: () => Promise.resolve({ done: true, value: undefined }),
    };
  }

  // ---- routing (called by the client) -----------------------------------

  /**
   * @internal The join (`resumed` false) or a resume after a reconnect was
   * answered. Called as the JoinOk is read, before the deliveries behind it.
   */
  joinedWith(ok: { subscription: string; durable: boolean; nextSeq: bigint; lastSeq: bigint }, resumed: boolean): void {
    if (this.closedWith) return;
    this.joined = true;
    this.info = { durableName: ok.subscription, durable: ok.durable, nextSeq: num(ok.nextSeq), lastSeq: num(ok.lastSeq) };
    this.catchUpTo = this.info.lastSeq;
    this.filter.advanceFloor(num(ok.nextSeq));
    if (!resumed) return;
    const event: RoomResumed = { room: this.name, subscription: this.subscription, durable: ok.durable, nextSeq: this.info.nextSeq, lastSeq: this.info.lastSeq };
    for (const h of [...this.resumedHandlers]) this.guard(() => h(event));
  }

  /** @internal The request that joins again after a reconnect. */
  resumeRequest(): JoinInit {
    return resumeJoin(this.join);
  }

  /** @internal Starts the keep-alive of held deliveries, every third of the ack timeout. */
  startKeepAlive(ackTimeoutMs: number): void {
    clearInterval(this.keepAliveTimer);
    const every = Math.max(10, Math.floor(ackTimeoutMs / 3));
    this.keepAliveTimer = setInterval(() => this.keepAlive(), every);
    const t = this.keepAliveTimer as unknown as { unref?: () => void };
    t.unref?.();
  }

  /** @internal A delivery for this membership. */
  offer(d: WireDelivery): void {
    if (this.closedWith) return;
    const m = d.message;
    if (!m) return;
    if (d.volatile) {
      const delivery = this.makeDelivery(d, 0);
      if (delivery) this.dispatch(delivery);
      return;
    }
    const seq = num(m.seq);
    const verdict = this.filter.offer(seq, Date.now());
    if (verdict === "drop") return;
    if (verdict === "reack") {
      this.queueAck(seq, true);
      return;
    }
    const delivery = this.makeDelivery(d, seq);
    if (delivery) this.dispatch(delivery);
  }

  /** @internal A gap notice. */
  gap(g: Gap): void {
    const notice: GapNotice = { room: g.room, subscription: g.subscription, fromSeq: num(g.fromSeq), toSeq: num(g.toSeq), missed: num(g.missed) };
    this.filter.skipped(notice.fromSeq, notice.toSeq);
    if (this.gapHandlers.size === 0) {
      if (this.earlyGaps.length < EARLY_NOTICES) this.earlyGaps.push(notice);
      return;
    }
    for (const h of [...this.gapHandlers]) this.guard(() => h(notice));
  }

  /** @internal A presence event. */
  presence(e: PresenceEvent): void {
    const kind = e.kind === PresenceEvent_Kind.JOINED ? "joined" : e.kind === PresenceEvent_Kind.LEFT ? "left" : undefined;
    if (!kind) return;
    const change: PresenceChange = { kind, member: memberFromWire(e.member), room: e.room };
    if (this.presenceHandlers.size === 0) {
      if (this.earlyPresence.length < EARLY_NOTICES) this.earlyPresence.push(change);
      return;
    }
    for (const h of [...this.presenceHandlers]) this.guard(() => h(change));
  }

  /** @internal The connection was lost: unsent acks are dropped (their redeliveries are acked again). */
  disconnected(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const waiters = this.ackWaiters;
    this.ackSeqs = [];
    this.ackWaiters = [];
    for (const w of waiters) w();
  }

  /** @internal The room ends (left, client closed, taken over, deleted). */
  shutdown(closed: RoomClosed): void {
    if (this.closedWith) return;
    this.closedWith = closed;
    clearInterval(this.keepAliveTimer);
    // Acks already made are still sent if the connection is up.
    if (this.ackSeqs.length > 0 && closed.reason === "left") this.flushAcks();
    else this.disconnected();
    for (const w of this.waiters.splice(0)) w({ done: true, value: undefined });
    for (const h of [...this.closedHandlers]) this.guard(() => h(closed));
  }

  // ---- acknowledgement (called by deliveries) ---------------------------

  private readonly owner = {
    ack: (seq: number) => {
      this.filter.ack(seq);
      return this.queueAck(seq);
    },
    ackQuietly: (seq: number) => {
      this.filter.ack(seq);
      this.queueAck(seq, true);
    },
    nack: async (seq: number, delayMs: number, reason: string) => {
      this.filter.release(seq);
      const conn = this.host.current();
      if (!conn) return;
      try {
        await conn.request({ case: "nack", value: { room: this.name, subscription: this.subscription, seqs: [BigInt(seq)], delayMs: BigInt(delayMs), reason } }, "nackOk");
      } catch (e) {
        if (!(e instanceof ConnectionLostError)) this.reportError(asRoomqError(e));
      }
    },
    inProgress: async (seq: number) => {
      const conn = this.host.current();
      if (!conn) return;
      try {
        await conn.request({ case: "inProgress", value: { room: this.name, subscription: this.subscription, seqs: [BigInt(seq)] } }, "inProgressOk");
      } catch (e) {
        if (!(e instanceof ConnectionLostError)) this.reportError(asRoomqError(e));
      }
    },
  };

  /** Queues an ack for the next flush; `quiet`: nobody waits for it (auto-ack, re-acks), so no promise is made. */
  private queueAck(seq: number, quiet?: false): Promise<void>;
  private queueAck(seq: number, quiet: true): void;
  private queueAck(seq: number, quiet = false): Promise<void> | void {
    if (!this.host.current()) return quiet ? undefined : Promise.resolve();
    if (quiet) {
      this.ackSeqs.push(seq);
      this.scheduleAcks();
      return undefined;
    }
    return new Promise<void>((resolve) => {
      this.ackSeqs.push(seq);
      this.ackWaiters.push(resolve);
      this.scheduleAcks();
    });
  }

  private scheduleAcks(): void {
    if (this.ackSeqs.length >= 1000) this.flushAcks();
    else if (!this.ackTimer) this.ackTimer = setTimeout(this.flushAcksLater, this.host.ackDelayMs);
  }

  private readonly flushAcksLater = (): void => this.flushAcks();

  private flushAcks(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    const seqs = this.ackSeqs;
    if (seqs.length === 0) return;
    const waiters = this.ackWaiters;
    this.ackSeqs = [];
    this.ackWaiters = [];
    const release = (): void => {
      for (const w of waiters) w();
    };
    const conn = this.host.current();
    if (!conn) {
      release();
      return;
    }
    const plans = planAcks(seqs, this.filter.lowestOutstanding(), this.mode !== "shared");
    const sends = plans.map((plan) =>
      conn.ack({ room: this.name, subscription: this.subscription, upTo: plan.upTo, seqs: plan.seqs }).then((ok) => this.filter.advanceFloor(num(ok.nextSeq))),
    );
    (sends.length === 1 ? (sends[0] as Promise<void>) : Promise.all(sends)).then(release, (e: unknown) => {
      if (e instanceof ConnectionLostError) {
        release();
        return;
      }
      // An ack never rejects (an ignored promise must not take a Node
      // process down); a refusal, e.g. NOT_JOINED after a takeover, goes
      // to the "error" listeners.
      this.ackFailures += seqs.length;
      release();
      this.reportError(asRoomqError(e));
    });
  }

  private keepAlive(): void {
    const conn = this.host.current();
    if (!conn || this.closedWith) return;
    this.filter.expireHeld(Date.now() - this.host.maxHoldMs);
    const held = this.filter.held();
    for (let at = 0; at < held.length; at += 10_000) {
      const seqs = held.slice(at, at + 10_000).map((s) => BigInt(s));
      conn.request({ case: "inProgress", value: { room: this.name, subscription: this.subscription, seqs } }, "inProgressOk").catch(() => undefined);
    }
  }

  // ---- hand-over ----------------------------------------------------------

  private makeDelivery(d: WireDelivery, seq: number): Delivery<T> | undefined {
    const m = d.message;
    if (!m) return undefined;
    let data: T;
    try {
      data = this.host.codec.decode(m.payload);
    } catch (e) {
      // Undecodable: hand the raw delivery to the "error" listeners, who
      // may ack or nack it; with auto-ack it is acknowledged (skipped).
      const delivery = new Delivery<T>(d, m, seq, undefined as T, this.owner, this.isCatchUp(d, seq));
      this.reportError(new RoomqError(`cannot decode the payload of ${d.room}#${seq}: ${e instanceof Error ? e.message : String(e)}`), delivery);
      if (this.autoAck) delivery.ackQuietly();
      return undefined;
    }
    return new Delivery<T>(d, m, seq, data, this.owner, this.isCatchUp(d, seq));
  }

  /** Stored before the latest (re)join was answered: the membership is catching up. */
  private isCatchUp(d: WireDelivery, seq: number): boolean {
    return !d.volatile && seq > 0 && seq <= this.catchUpTo;
  }

  private dispatch(delivery: Delivery<T>): void {
    const set = RESERVED.has(delivery.event) ? undefined : this.handlers.get(delivery.event);
    if ((!set || set.size === 0) && this.anyHandlers.size === 0) {
      const waiter = this.waiters.shift();
      if (waiter) waiter(this.taken(delivery));
      else if (!delivery.volatile) this.queue.push(delivery);
      else if (this.queuedVolatile < EXTRA_QUEUE) {
        // Stored deliveries are bounded by max_in_flight; volatile ones are
        // not, so they have their own bound and are dropped past it.
        this.queuedVolatile++;
        this.queue.push(delivery);
      } else this.droppedVolatile++;
      return;
    }
    // Handlers' promises, if any returned one (most return nothing: no array then).
    let promises: Promise<void>[] | undefined;
    try {
      if (set) {
        for (const h of set) {
          const r = h(delivery.data, delivery);
          if (r instanceof Promise) (promises ??= []).push(r);
        }
      }
      if (this.anyHandlers.size > 0) {
        for (const h of this.anyHandlers) {
          const r = h(delivery.event, delivery.data, delivery);
          if (r instanceof Promise) (promises ??= []).push(r);
        }
      }
    } catch (e) {
      this.handlerFailed(delivery, e);
      return;
    }
    if (!this.autoAck) {
      if (promises) for (const r of promises) r.catch((e: unknown) => this.reportError(asRoomqError(e), delivery));
      return;
    }
    if (!promises) {
      delivery.ackQuietly();
      return;
    }
    Promise.all(promises).then(
      () => delivery.ackQuietly(),
      (e: unknown) => this.handlerFailed(delivery, e),
    );
  }

  private handlerFailed(delivery: Delivery<T>, e: unknown): void {
    this.reportError(asRoomqError(e), delivery);
    if (this.autoAck) delivery.nack().catch(() => undefined);
  }

  /** Hands a queued delivery to `for await`; with auto-ack it is acknowledged now. */
  private taken(d: Delivery<T>): IteratorResult<Delivery<T>> {
    if (this.autoAck) d.ackQuietly();
    return { done: false, value: d };
  }

  /** A handler was added for `event`: queued deliveries of it go there. */
  private drainQueueTo(event: string): void {
    if (this.queue.length === 0 || RESERVED.has(event)) return;
    const keep: Delivery<T>[] = [];
    const take: Delivery<T>[] = [];
    for (const d of this.queue) (d.event === event ? take : keep).push(d);
    this.queue.splice(0, this.queue.length, ...keep);
    this.queuedVolatile = keep.filter((d) => d.volatile).length;
    for (const d of take) this.dispatch(d);
  }

  private reportError(error: RoomqError, delivery?: Delivery<T>): void {
    if (this.errorHandlers.size === 0) {
      this.host.unhandled(error);
      return;
    }
    for (const h of [...this.errorHandlers]) this.guard(() => h(error, delivery));
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      setTimeout(() => {
        throw e;
      }, 0);
    }
  }
}

function asRoomqError(e: unknown): RoomqError {
  if (e instanceof RoomqError) return e;
  if (e instanceof Error && !(e instanceof RoomqError)) {
    const err = new RoomqError(`handler failed: ${e.message}`);
    (err as { cause?: unknown }).cause = e;
    return err;
  }
  const err = new RoomqError(`handler failed: ${e instanceof Error ? e.message : String(e)}`);
  (err as { cause?: unknown }).cause = e;
  return err;
}

