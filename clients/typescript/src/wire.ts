/** Conversions between wire types and the SDK's public types. */
import { BrokerError, type BrokerErrorDetail } from "./errors.js";
import type { Error as WireError } from "./gen/roomq_pb.js";

/** A {@link BrokerError} from a wire `Error`, with the structured fields the broker sent. */
export function brokerError(e: WireError): BrokerError {
  const info: BrokerErrorDetail = {};
  const extra = e as unknown as Record<string, unknown>;
  if (typeof extra["room"] === "string" && extra["room"] !== "") info.room = extra["room"];
  if (typeof extra["subscription"] === "string") info.subscription = extra["subscription"];
  if (typeof extra["quota"] === "string" && extra["quota"] !== "") info.quota = extra["quota"];
  if (typeof extra["lastSeq"] === "bigint") info.lastSeq = Number(extra["lastSeq"]);
  return new BrokerError(e.code, e.name, e.message, e.fatal, info);
}

/** A uint64 from the wire as a JS number (seqs stay far below 2^53). */
export function num(v: bigint): number {
  return Number(v);
}
