/** Publish options, results, and the `Publish` request they make (no I/O). */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Durability, type Publish, type PublishOk, type PublishSchema } from "./gen/roomq_pb.js";
import { uuidBytes, uuidToString, uuidV7 } from "./ids.js";
import { num } from "./wire.js";

export type PublishInit = MessageInitShape<typeof PublishSchema>;

export interface PublishOptions {
  /** More rooms: the message is stored once in each; a session in several gets it once. */
  rooms?: string[];
  /** Not to this client's own session, nor to its durable memberships (Socket.IO's `socket.broadcast`). */
  exceptSelf?: boolean;
  /** Not to sessions that are members of any of these rooms, decided at delivery. */
  exceptRooms?: string[];
  /** Not to these sessions (UUID text or 16 bytes, e.g. a `Member.sessionId`). */
  exceptSessions?: Array<string | Uint8Array>;
  headers?: Record<string, string>;
  /** Ordering key: within a group, messages with the same key go to the same consumer, in order. */
  key?: string;
  /** Not delivered once this many ms have passed since the broker accepted it. */
  ttlMs?: number;
  /** Not delivered before this many ms after the broker accepted it. */
  delayMs?: number;
  /** Not delivered before this time (the broker's clock). */
  deliverAt?: Date | number;
  /** Not stored; delivered only to the members joined now whose queues have room; never re-sent. */
  volatile?: boolean;
  /** The dedup id (UUID text or 16 bytes); default a fresh UUID v7. Retries reuse it. */
  dedupId?: string | Uint8Array;
  /** Store it only if the room's last seq is exactly this (0 = empty room); else `PRECONDITION_FAILED`. */
  expectedLastSeq?: number | bigint;
  /** Give up after this long (ms), reconnects included; 0 = never. Default: the client's `publishTimeoutMs`. */
  timeoutMs?: number;
}

export type DurabilityName = "sync" | "batched" | "volatile" | "unspecified";

export interface PublishResult {
  /** The seq in the first room (0 for a volatile publish). */
  seq: number;
  /** One entry per room, in the order given. */
  seqs: Array<{ room: string; seq: number }>;
  /** `sync`: on disk when confirmed; `batched`: confirmed before the flush; `volatile`: not stored. */
  durability: DurabilityName;
  /** The dedup id had been seen: these are the original seqs. */
  duplicate: boolean;
  /** The dedup id it carried ("" for a volatile publish). */
  readonly dedupId: string;
}

function ms(v: number): bigint {
  return BigInt(Math.max(0, Math.ceil(v)));
}

// Shared by the publishes without headers, except rooms or except sessions:
// nothing writes to a planned request, and these cannot be written to.
const NO_HEADERS: Record<string, string> = Object.freeze({}) as Record<string, string>;
const NO_STRINGS: string[] = Object.freeze([]) as unknown as string[];
const NO_BYTES: Uint8Array[] = Object.freeze([]) as unknown as Uint8Array[];

/** The `Publish` request for these arguments. */
export function planPublish(rooms: string[], event: string, payload: Uint8Array, options: PublishOptions): PublishInit {
  const p: PublishInit = {
    rooms: options.rooms ? [...rooms, ...options.rooms] : rooms.slice(),
    event,
    payload,
    headers: options.headers ?? NO_HEADERS,
    exceptSelf: options.exceptSelf ?? false,
    key: options.key ?? "",
    exceptRooms: options.exceptRooms ?? NO_STRINGS,
    exceptSessions: options.exceptSessions ? options.exceptSessions.map(uuidBytes) : NO_BYTES,
    volatile: options.volatile ?? false,
  };
  if (options.ttlMs !== undefined) p.ttlMs = ms(options.ttlMs);
  if (options.delayMs !== undefined) p.delayMs = ms(options.delayMs);
  if (options.deliverAt !== undefined) p.deliverAtMs = ms(options.deliverAt instanceof Date ? options.deliverAt.getTime() : options.deliverAt);
  if (options.expectedLastSeq !== undefined) p.expectedLastSeq = BigInt(options.expectedLastSeq);
  if (!p.volatile) p.dedupId = options.dedupId !== undefined ? uuidBytes(options.dedupId) : uuidV7();
  else if (options.dedupId !== undefined) p.dedupId = uuidBytes(options.dedupId); // refused by the broker, which says so
  return p;
}

/**
 * The `Publish` message of a plan: what `create(PublishSchema, init)` makes
 * (a unit test checks that), without the generic machinery, once per publish.
 */
export function publishMessage(init: PublishInit): Publish {
  const m: Publish = {
    $typeName: "roomq.v1.Publish",
    rooms: init.rooms ?? [],
    event: init.event ?? "",
    payload: init.payload ?? new Uint8Array(0),
    headers: init.headers ?? {},
    dedupId: init.dedupId ?? new Uint8Array(0),
    exceptSelf: init.exceptSelf ?? false,
    key: init.key ?? "",
    ttlMs: init.ttlMs ?? 0n,
    deliverAtMs: init.deliverAtMs ?? 0n,
    delayMs: init.delayMs ?? 0n,
    volatile: init.volatile ?? false,
    exceptRooms: init.exceptRooms ?? [],
    exceptSessions: init.exceptSessions ?? [],
  };
  if (init.expectedLastSeq !== undefined && init.expectedLastSeq !== null) m.expectedLastSeq = init.expectedLastSeq;
  return m;
}

export function durabilityName(d: Durability): DurabilityName {
  switch (d) {
    case Durability.SYNC:
      return "sync";
    case Durability.BATCHED:
      return "batched";
    case Durability.VOLATILE:
      return "volatile";
    default:
      return "unspecified";
  }
}

/** A confirmation; its dedup id's text is made only when read. */
class Confirmation implements PublishResult {
  readonly seq: number;
  readonly seqs: Array<{ room: string; seq: number }>;
  readonly durability: DurabilityName;
  readonly duplicate: boolean;
  private readonly id: Uint8Array | undefined;

  constructor(ok: PublishOk, dedupId: Uint8Array | undefined) {
    this.seqs = ok.seqs.map((s) => ({ room: s.room, seq: num(s.seq) }));
    this.seq = this.seqs[0]?.seq ?? 0;
    this.durability = durabilityName(ok.durability);
    this.duplicate = ok.duplicate;
    this.id = dedupId;
  }

  get dedupId(): string {
    return this.id && this.id.length > 0 ? uuidToString(this.id) : "";
  }

  toJSON(): PublishResult {
    return { seq: this.seq, seqs: this.seqs, durability: this.durability, duplicate: this.duplicate, dedupId: this.dedupId };
  }
}

export function publishResult(ok: PublishOk, dedupId: Uint8Array | undefined): PublishResult {
  return new Confirmation(ok, dedupId);
}
