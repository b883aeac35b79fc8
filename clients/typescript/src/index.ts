/**
 * roomq — the TypeScript client for the roomq broker, for browsers and
 * Node ≥ 20, over WebSocket.
 *
 * Layout:
 * - `client.ts`: `connect`, the {@link Client} (reconnect, resume, re-send), `to(...).emit(...)`
 * - `room.ts`, `delivery.ts`: memberships, deliveries, acks, presence, gaps
 * - `connection.ts`, `transport.ts`: one WebSocket connection: handshake, requests, pushes, ping
 * - `codec.ts`, `ids.ts`, `wire.ts`: frames, payload codecs, UUIDs
 * - state machines without I/O: `outbox.ts` (publish window, offline queue,
 *   re-send), `filter.ts` (ordered mode), `acks.ts` (ack coalescing),
 *   `backoff.ts` (full jitter), `join.ts` and `publish.ts` (requests from options)
 * - `gen/`: generated from proto/roomq.proto; never edited by hand
 */
export { connect, Client, BroadcastOperator } from "./client.js";
export type { ConnectOptions, ConnectInfo, DisconnectInfo, ReconnectingInfo, RecoveredInfo, ClientEvents, ClientState, RoomSummary } from "./client.js";
export { Room } from "./room.js";
export type { RoomClosed, JoinInfo } from "./room.js";
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
} from "./errors.js";
export type { ErrorCodeName, BrokerErrorDetail } from "./errors.js";
export { uuidToString, uuidBytes } from "./ids.js";
