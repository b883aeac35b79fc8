/**
 * Join options and the `Join` request they make, free of I/O, and the
 * request that resumes a membership after a reconnect.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { GroupMode, MemberMode, StartPosition, type JoinSchema } from "./gen/roomq_pb.js";
import type { FilterMode } from "./filter.js";

export type JoinInit = MessageInitShape<typeof JoinSchema>;

/**
 * Where a new membership starts: `"resume"` (its stored cursor; a new
 * membership starts at `"new"`), `"new"` (only what is published from now
 * on), `"earliest"` (the first stored message), `{ seq }`, or `{ time }`
 * (the first message the broker accepted at or after it; a `Date` or ms
 * since the epoch).
 */
export type StartAt = "resume" | "new" | "earliest" | { seq: number } | { time: Date | number };

export interface JoinOptions {
  /**
   * The durable membership's name. Default: the client id (if the client
   * has one; then the membership is durable), else ephemeral.
   */
  subscription?: string;
  /** `true`: durable (fails without a name); `false`: ephemeral. Default: durable when a name is available. */
  durable?: boolean;
  /** Where to start (default `"resume"`). */
  start?: StartAt;
  /** At most this many unacknowledged deliveries at a time (0 / absent: the broker's default). */
  maxInFlight?: number;
  /** Redeliver what is not acknowledged within this time (ms; absent: the broker's default). */
  ackTimeoutMs?: number;
  /** Ack timeouts per attempt (ms, each ≥ 1): attempt n waits `backoffMs[n-1]`. */
  backoffMs?: number[];
  /** Dead-letter a message after this many deliveries; 0 = never (absent: the broker's default, 20). */
  maxDeliveries?: number;
  /** Only events matching one of these patterns (`*` = any run of characters). */
  events?: string[];
  /** Receive presence events (`room.on("presence", ...)`). */
  presence?: boolean;
  /** Consume as one of the group of this name (competing consumers). */
  group?: string;
  /** With `group`: only the first consumer gets messages, the next takes over when it leaves. */
  exclusive?: boolean;
  /**
   * Ordered mode (default: on for durable memberships, off for ephemeral
   * ones; never for a group): messages in seq order, never one already
   * acknowledged.
   */
  ordered?: boolean;
  /**
   * Acknowledge automatically: after the `on` handlers of a delivery return
   * (or their promises resolve; a throw or rejection gives it back with a
   * nack), or when `for await` takes it.
   */
  autoAck?: boolean;
}

/** The join request for `room` and the filter mode of the subscription. */
export function planJoin(room: string, options: JoinOptions, hasClientId: boolean): { join: JoinInit; mode: FilterMode; label: string } {
  const label = options.subscription ?? "";
  const group = options.group ?? "";
  const durable = options.durable ?? (label !== "" || hasClientId || group !== "");
  const mode: FilterMode = group !== "" ? "shared" : (options.ordered ?? durable) ? "ordered" : "unordered";
  const join: JoinInit = {
    room,
    subscription: label,
    mode: options.durable === true ? MemberMode.DURABLE : options.durable === false ? MemberMode.EPHEMERAL : MemberMode.AUTO,
    start: StartPosition.RESUME,
    maxInFlight: Math.max(0, Math.floor(options.maxInFlight ?? 0)),
    ackTimeoutMs: BigInt(Math.max(0, Math.ceil(options.ackTimeoutMs ?? 0))),
    group,
    groupMode: options.exclusive ? GroupMode.EXCLUSIVE : GroupMode.KEY_ORDERED,
    backoffMs: (options.backoffMs ?? []).map((ms) => BigInt(Math.max(1, Math.ceil(ms)))),
    events: options.events ?? [],
    presence: options.presence ?? false,
  };
  if (options.maxDeliveries !== undefined) join.maxDeliveries = Math.max(0, Math.floor(options.maxDeliveries));
  const start = options.start ?? "resume";
  if (start === "new") join.start = StartPosition.NEW;
  else if (start === "earliest") join.start = StartPosition.EARLIEST;
  else if (typeof start === "object" && "seq" in start) {
    join.start = StartPosition.SEQ;
    join.startSeq = BigInt(Math.max(0, Math.floor(start.seq)));
  } else if (typeof start === "object" && "time" in start) {
    join.start = StartPosition.TIME;
    const ms = start.time instanceof Date ? start.time.getTime() : start.time;
    join.startTimeMs = BigInt(Math.max(0, Math.floor(ms)));
  }
  return { join, mode, label };
}

/**
 * The request that joins a membership again on a new connection: from its
 * stored cursor (an ephemeral one from now on), with the same settings.
 */
export function resumeJoin(join: JoinInit): JoinInit {
  const start = join.mode === MemberMode.EPHEMERAL ? StartPosition.NEW : StartPosition.RESUME;
  return { ...join, start, startSeq: 0n, startTimeMs: 0n };
}
