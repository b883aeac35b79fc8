/** A message handed to the application, and the notices about a membership. */
import { fromUtf8 } from "./codec.js";
import { InvalidUseError } from "./errors.js";
import type { Delivery as WireDelivery, Message as WireMessage } from "./gen/roomq_pb.js";
import { uuidToString } from "./ids.js";

/** What a delivery needs from its room to acknowledge itself. */
export interface DeliveryOwner {
  ack(seq: number): Promise<void>;
  ackQuietly(seq: number): void;
  nack(seq: number, delayMs: number, reason: string): Promise<void>;
  inProgress(seq: number): Promise<void>;
}

/**
 * One message for one membership. Acknowledge it with {@link ack}, or give
 * it back with {@link nack}; until then the SDK keeps the broker from
 * redelivering it (up to the client's `maxHoldMs`).
 */
export class Delivery<T> {
  readonly room: string;
  /** The subscription handle it came under ("" for the default). */
  readonly subscription: string;
  /** Its seq in the room (0 for a volatile message). */
  readonly seq: number;
  readonly event: string;
  /** The payload bytes, exactly as published. */
  readonly payload: Uint8Array;
  /** The payload decoded by the client's codec. */
  readonly data: T;
  readonly headers: Record<string, string>;
  private readonly publisherSessionBytes: Uint8Array;
  /** When the broker accepted it, ms since the Unix epoch. */
  readonly timestampMs: number;
  /** 1 for the first delivery to this membership, then 2, 3, ... */
  readonly attempt: number;
  /** The membership may have seen it before. */
  readonly redelivered: boolean;
  /** The ordering key ("" if none). */
  readonly key: string;
  /** When it expires (0 = never), ms since the epoch. */
  readonly expiresAtMs: number;
  /** When it could first be delivered (0 = at once), ms since the epoch. */
  readonly deliverAtMs: number;
  /** Never stored, never redelivered; `ack` and `inProgress` do nothing, `nack` is refused. */
  readonly volatile: boolean;
  /**
   * Catch-up: the message was stored before this membership was joined, or
   * joined again after a reconnect (its seq is at most the room's last seq
   * in that join's answer, `room.info.lastSeq`) — published while this
   * client was away, not acknowledged before, or history from a `start`
   * position. False for what is published after the (re)join, and for
   * volatile messages.
   */
  readonly catchUp: boolean;
  private readonly owner: DeliveryOwner;
  private done = false;

  /** @internal Made by the room from a wire delivery and its decoded payload. */
  constructor(d: WireDelivery, m: WireMessage, seq: number, data: T, owner: DeliveryOwner, catchUp = false) {
    this.room = d.room;
    this.subscription = d.subscription;
    this.seq = seq;
    this.event = m.event;
    this.payload = m.payload;
    this.data = data;
    this.headers = m.headers;
    this.publisherSessionBytes = m.publisherSession;
    this.timestampMs = Number(m.timestampMs);
    this.attempt = d.attempt;
    this.redelivered = d.redelivered;
    this.key = m.key;
    this.expiresAtMs = Number(m.expiresAtMs);
    this.deliverAtMs = Number(m.deliverAtMs);
    this.volatile = d.volatile;
    this.catchUp = catchUp;
    this.owner = owner;
  }

  /**
   * The session that published it (UUID text, as `Member.sessionId`,
   * `PresenceChange.member.sessionId` and `client.sessionId`): compare it
   * with `client.sessionId` to tell your own messages, or look it up in
   * `room.members()` for the publisher's client id and name while it is
   * connected. A session id is per connection: the same client has a new
   * one after each reconnect. The broker does not send the publisher's
   * client id or name with a message; put them in the payload or
   * `headers` if receivers need them later.
   */
  get publisherSession(): string {
    return uuidToString(this.publisherSessionBytes);
  }

  /** The payload as UTF-8 text. */
  text(): string {
    return fromUtf8(this.payload);
  }

  /** The payload parsed as JSON. */
  json<J = unknown>(): J {
    return JSON.parse(this.text()) as J;
  }

  /** Whether it was acknowledged or given back through this object. */
  get settled(): boolean {
    return this.done;
  }

  /**
   * Acknowledges it. Acks are coalesced (sent within a few ms, cumulatively
   * where contiguous); the promise resolves when the broker confirmed, or
   * at once when the connection is down (a redelivery after the reconnect
   * is then acknowledged silently). It never rejects: a refusal by the
   * broker goes to the room's "error" listeners.
   */
  ack(): Promise<void> {
    if (this.volatile || this.done) return Promise.resolve();
    this.done = true;
    return this.owner.ack(this.seq);
  }

  /** @internal Acknowledges it without making a promise (auto-ack). */
  ackQuietly(): void {
    if (this.volatile || this.done) return;
    this.done = true;
    this.owner.ackQuietly(this.seq);
  }

  /**
   * Gives it back, to be delivered again after `delayMs` (0 = now). `reason`
   * is kept if it is dead-lettered. Rejects only for a volatile delivery; a
   * refusal by the broker goes to the room's "error" listeners.
   */
  nack(delayMs = 0, reason = ""): Promise<void> {
    if (this.volatile) return Promise.reject(new InvalidUseError("a volatile delivery is never redelivered, so it cannot be given back"));
    if (this.done) return Promise.resolve();
    this.done = true;
    return this.owner.nack(this.seq, Math.max(0, Math.ceil(delayMs)), reason);
  }

  /** Tells the broker it is still being worked on (restarts its ack timer). The SDK also does this by itself while it is held. */
  inProgress(): Promise<void> {
    if (this.volatile || this.done) return Promise.resolve();
    return this.owner.inProgress(this.seq);
  }
}

/** The broker moved a membership past messages it never acknowledged (retention, purge, redrive). */
export interface GapNotice {
  room: string;
  subscription: string;
  fromSeq: number;
  toSeq: number;
  /** How many seqs in `fromSeq..=toSeq` it had not acknowledged. */
  missed: number;
}

/** A session in a room (`room.members()`, presence events). */
export interface Member {
  /** The session (UUID text); what `exceptSessions` takes. */
  sessionId: string;
  clientId: string;
  clientName: string;
  /** The durable membership's name, "" when ephemeral or a group consumer. */
  subscription: string;
  durable: boolean;
  /** The group, or "". */
  group: string;
}

/** Someone joined or left a room. */
export interface PresenceChange {
  kind: "joined" | "left";
  member: Member;
  room: string;
}
