/**
 * Typed errors. A refusal by the broker is a {@link BrokerError} carrying the
 * broker's stable numeric code and its name (docs/protocol.md §11); the
 * other classes say what went wrong on the client's side.
 */

/** The broker's error codes (docs/protocol.md §11). Never renumbered. */
export const ErrorCode = {
  MALFORMED_FRAME: 1,
  FRAME_TOO_LARGE: 2,
  HANDSHAKE_REQUIRED: 3,
  HANDSHAKE_TIMEOUT: 4,
  UNSUPPORTED_VERSION: 5,
  INVALID_NAME: 6,
  INVALID_REQUEST: 7,
  NOT_JOINED: 8,
  UNKNOWN_SEQ: 9,
  ALREADY_JOINED: 10,
  IDLE_TIMEOUT: 11,
  SLOW_CONSUMER: 12,
  MEMBERSHIP_TAKEN_OVER: 13,
  SHUTTING_DOWN: 14,
  STORAGE_FAILURE: 15,
  TOO_MANY_CONNECTIONS: 16,
  UNAUTHENTICATED: 17,
  PERMISSION_DENIED: 18,
  QUOTA_EXCEEDED: 19,
  TOO_MANY_PENDING_REQUESTS: 20,
  CORRUPT_DATA: 21,
  INTERNAL: 22,
  MESSAGE_TOO_LARGE: 23,
  PRECONDITION_FAILED: 24,
  NOT_FOUND: 25,
  KICKED: 26,
} as const;

/** The name of a known code, e.g. `"PRECONDITION_FAILED"`. */
export type ErrorCodeName = keyof typeof ErrorCode;

/** Base class of every error this package throws. */
export class RoomqError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Structured detail the broker may attach to an error. */
export interface BrokerErrorDetail {
  /** The room a membership error concerns (pushed errors). */
  room?: string;
  /** The subscription handle a membership error concerns. */
  subscription?: string;
  /** Which quota a `QUOTA_EXCEEDED` is about. */
  quota?: string;
  /** The room's last seq, with `PRECONDITION_FAILED`. */
  lastSeq?: number;
}

/** The broker refused a request, or pushed an error. */
export class BrokerError extends RoomqError {
  /** The broker's numeric code (stable). */
  readonly code: number;
  /** The code's stable name, e.g. `"QUOTA_EXCEEDED"`, as the broker sent it. */
  readonly codeName: string;
  /** The human detail; show it to people, do not parse it. */
  readonly detail: string;
  /** The broker closes the connection after a fatal error. */
  readonly fatal: boolean;
  /** Structured fields, where the broker sends them. */
  readonly info: BrokerErrorDetail;

  constructor(code: number, codeName: string, detail: string, fatal: boolean, info: BrokerErrorDetail = {}) {
    super(`${codeName} (${code}): ${detail}`);
    this.code = code;
    this.codeName = codeName;
    this.detail = detail;
    this.fatal = fatal;
    this.info = info;
  }

  /** Whether this is the error of `code` (a number or a code name). */
  is(code: number | ErrorCodeName): boolean {
    return typeof code === "number" ? this.code === code : this.code === ErrorCode[code];
  }
}

/**
 * The connection ended before the reply came. The request may or may not
 * have taken effect. (Publishes are not failed this way: they are sent
 * again on the next connection with their dedup id.)
 */
export class ConnectionLostError extends RoomqError {}

/** The client was closed, or gave up reconnecting. */
export class ClosedError extends RoomqError {}

/** An operation did not complete in time. A publish that times out may or may not have been stored. */
export class TimeoutError extends RoomqError {}

/** A publish did not fit in the offline queue (see `offlineQueue` in the connect options). */
export class OfflineQueueFullError extends RoomqError {}

/** The broker answered with something the protocol does not allow here. */
export class ProtocolError extends RoomqError {}

/** A call that does not apply, e.g. a nack of a volatile delivery. */
export class InvalidUseError extends RoomqError {}

/**
 * Codes that end a connection, or refuse its handshake, for a reason that
 * trying again cannot fix: the namespace, name, token or protocol version
 * is wrong, or an administrator closed the session.
 */
const FINAL_CODES: ReadonlySet<number> = new Set([
  ErrorCode.UNSUPPORTED_VERSION,
  ErrorCode.INVALID_NAME,
  ErrorCode.UNAUTHENTICATED,
  ErrorCode.PERMISSION_DENIED,
  ErrorCode.NOT_FOUND,
  ErrorCode.KICKED,
]);

/**
 * Whether a connection that the broker refused or ended with this error
 * code is worth trying again (with back-off). False for
 * `UNSUPPORTED_VERSION`, `INVALID_NAME`, `UNAUTHENTICATED`,
 * `PERMISSION_DENIED`, `NOT_FOUND` and `KICKED`: the client stops
 * (re)connecting on these and closes. True for every other code, unknown
 * ones included (`SHUTTING_DOWN`, `IDLE_TIMEOUT`, a namespace's
 * `QUOTA_EXCEEDED` `max_connections`, ...). Takes a code number, a code
 * name, or a {@link BrokerError}.
 *
 * It is about connections: whether a refused *request* may succeed later
 * depends on more than its code (see `BrokerError.info.quota`).
 */
export function isRetryable(code: number | ErrorCodeName | BrokerError): boolean {
  const n = code instanceof BrokerError ? code.code : typeof code === "number" ? code : ErrorCode[code];
  return !FINAL_CODES.has(n);
}

/** Whether `e` is a {@link BrokerError}, optionally of one code. */
export function isBrokerError(e: unknown, code?: number | ErrorCodeName): e is BrokerError {
  return e instanceof BrokerError && (code === undefined || e.is(code));
}
