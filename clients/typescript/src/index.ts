/**
 * roomq — the TypeScript client for the roomq broker, for browsers and
 * Node ≥ 20, over WebSocket.
 *
 * Layout:
 * - `client.ts`: `connect`, `createClient`, the {@link Client} (first connect and
 *   reconnect, resume, re-send, `status()`), `to(...).emit(...)`
 * - `room.ts`, `delivery.ts`: memberships, deliveries, acks, presence, gaps
 * - `connection.ts`, `transport.ts`: one WebSocket connection: handshake, requests, pushes, ping
 * - `codec.ts`, `ids.ts`, `wire.ts`: frames, payload codecs, UUIDs
 * - state machines without I/O: `outbox.ts` (publish window, offline queue,
 *   re-send), `filter.ts` (ordered mode), `acks.ts` (ack coalescing),
 *   `backoff.ts` (full jitter), `status.ts` (the bounded status iterator),
 *   `join.ts` and `publish.ts` (requests from options)
 * - `gen/`: generated from proto/roomq.proto; never edited by hand
 */
export { connect, createClient, Client, BroadcastOperator } from "./client.js";
export type {
  ConnectOptions,
  ConnectInfo,
  DisconnectInfo,
  ReconnectingInfo,
  RecoveredInfo,
  CloseInfo,
  ClientEvents,
  ClientState,
  ClientStatus,
  RoomSummary,
} from "./client.js";
export type { DroppedStatus } from "./status.js";
export { Room } from "./room.js";
export type { RoomClosed, RoomResumed, JoinInfo } from "./room.js";
export { Delivery } from "./delivery.js";
export type { GapNotice, Member, PresenceChange } from "./delivery.js";
export type { JoinOptions, StartAt } from "./join.js";
export type { PublishOptions, PublishResult, DurabilityName } from "./publish.js";
export type { ReconnectOptions } from "./backoff.js";
export type { OverflowPolicy } from "./outbox.js";
export { bytesCodec, textCodec, jsonCodec, utf8, fromUtf8 } from "./codec.js";
export type { Codec } from "./codec.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport.js";
export {
  ErrorCode,
  RoomqError,
  BrokerError,
  ConnectionLostError,
  ClosedError,
  TimeoutError,
  OfflineQueueFullError,
  ProtocolError,
  InvalidUseError,
  isBrokerError,
  isRetryable,
} from "./errors.js";
export type { ErrorCodeName, BrokerErrorDetail } from "./errors.js";
export { uuidToString, uuidBytes } from "./ids.js";
