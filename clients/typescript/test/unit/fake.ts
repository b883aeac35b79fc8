/**
 * An in-memory broker behind a fake WebSocket class, for testing the
 * client's state machine without a network. It speaks just enough of the
 * protocol: handshake, join, leave, publish (with dedup), ack, ping.
 */
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { decodeClientFrame } from "../../src/codec.js";
import { ServerFrameSchema, type ClientFrame } from "../../src/gen/roomq_pb.js";
import { SUBPROTOCOL, type WebSocketConstructor } from "../../src/transport.js";

type ServerInit = MessageInitShape<typeof ServerFrameSchema>;

export class FakeBroker {
  /** Every frame received, in order, per connection number. */
  readonly frames: ClientFrame[][] = [];
  /** When set, publishes are received but not answered. */
  holdPublishes = false;
  /** Answer acks with NOT_JOINED. */
  refuseAcks = false;
  /** Refuse new connections (the broker is down). */
  down = false;
  /** New connections refused so far. */
  refused = 0;
  /** Sockets made so far (connection attempts started). */
  attempts = 0;
  /**
   * Frames sent right behind a JoinOk, in the same socket read (as `ws`
   * hands over several frames of one read in one go): given the join's
   * room and subscription.
   */
  behindJoin: ((room: string, subscription: string) => ServerInit[]) | undefined;
  private readonly stored = new Map<string, number>();
  private lastSeq = new Map<string, number>();
  /** The cursor a join of the room answers with (default 1). */
  readonly nextSeq = new Map<string, bigint>();
  private sockets: FakeSocket[] = [];
  readonly WebSocket: WebSocketConstructor;

  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const broker = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url: string, protocol: string) {
        super(broker, url, protocol);
      }
    };
  }

  /** Kills every open connection, as a broker crash would. */
  dropAll(): void {
    for (const s of this.sockets.splice(0)) s.serverClose(1006, "");
  }

  attach(s: FakeSocket): number {
    this.sockets.push(s);
    this.frames.push([]);
    return this.frames.length - 1;
  }

  handle(s: FakeSocket, conn: number, f: ClientFrame): void {
    this.frames[conn]?.push(f);
    const id = f.requestId;
    const b = f.body;
    const reply = (body: ServerInit["body"]) => s.deliver({ requestId: id, body });
    switch (b.case) {
      case "handshake":
        reply({ case: "handshakeOk", value: { protocolVersion: 1, sessionId: new Uint8Array(16).fill(conn + 1), limits: { maxInFlight: 100, ackTimeoutMs: 30000n, idleTimeoutMs: 60000n, maxPendingRequests: 1024, maxFrameBytes: 1 << 20 } } });
        return;
      case "join": {
        const ok: ServerInit = { requestId: id, body: { case: "joinOk", value: { room: b.value.room, subscription: b.value.subscription || "me", durable: true, nextSeq: this.nextSeq.get(b.value.room) ?? 1n, lastSeq: BigInt(this.lastSeq.get(b.value.room) ?? 0) } } };
        s.deliverMany([ok, ...(this.behindJoin?.(b.value.room, b.value.subscription) ?? [])]);
        return;
      }
      case "publish": {
        if (this.holdPublishes) return;
        const key = Buffer.from(b.value.dedupId).toString("hex");
        const room = b.value.rooms[0] ?? "";
        const seen = this.stored.get(key);
        if (seen !== undefined) {
          reply({ case: "publishOk", value: { seqs: [{ room, seq: BigInt(seen) }], duplicate: true, durability: 1 } });
          return;
        }
        const seq = (this.lastSeq.get(room) ?? 0) + 1;
        this.lastSeq.set(room, seq);
        if (key !== "") this.stored.set(key, seq);
        reply({ case: "publishOk", value: { seqs: [{ room, seq: BigInt(seq) }], durability: 1 } });
        return;
      }
      case "ack":
        if (this.refuseAcks) {
          reply({ case: "error", value: { code: 8, name: "NOT_JOINED", message: "not joined", fatal: false } });
          return;
        }
        reply({ case: "ackOk", value: { nextSeq: b.value.upTo + 1n } });
        return;
      case "ping":
        reply({ case: "pong", value: { nonce: b.value.nonce } });
        return;
      case "leave":
        reply({ case: "leaveOk", value: {} });
        return;
      default:
        return;
    }
  }

  /** Pushes a delivery on the newest connection. */
  push(room: string, subscription: string, seq: number, event: string, payload: string, attempt = 1): void {
    const s = this.sockets.at(-1);
    s?.deliver({
      requestId: 0n,
      body: { case: "delivery", value: { room, subscription, attempt, redelivered: attempt > 1, message: { seq: BigInt(seq), event, payload: new TextEncoder().encode(payload), publisherSession: new Uint8Array(16) } } },
    });
  }

  /** Pushes any frame on the newest connection. */
  pushFrame(frame: ServerInit): void {
    this.sockets.at(-1)?.deliver(frame);
  }

  /** Answers every held publish (as a broker that stored them before crashing would not). */
  storeHeld(): void {
    this.holdPublishes = false;
  }
}

class FakeSocket {
  binaryType = "blob";
  readyState = 0;
  protocol = "";
  onopen: ((e: never) => void) | null = null;
  onmessage: ((e: never) => void) | null = null;
  onclose: ((e: never) => void) | null = null;
  onerror: ((e: never) => void) | null = null;
  private readonly broker: FakeBroker;
  private conn = -1;

  constructor(broker: FakeBroker, _url: string, protocol: string) {
    this.broker = broker;
    broker.attempts++;
    setTimeout(() => {
      if (broker.down) {
        broker.refused++;
        this.readyState = 3;
        (this.onerror as ((e: object) => void) | null)?.({ message: "refused" });
        (this.onclose as ((e: object) => void) | null)?.({ code: 1006, reason: "" });
        return;
      }
      this.protocol = protocol === SUBPROTOCOL ? SUBPROTOCOL : "";
      this.readyState = 1;
      this.conn = broker.attach(this);
      (this.onopen as ((e: object) => void) | null)?.({});
    }, 1);
  }

  send(data: Uint8Array): void {
    if (this.readyState !== 1) throw new Error("not open");
    const frame = decodeClientFrame(data);
    queueMicrotask(() => this.broker.handle(this, this.conn, frame));
  }

  close(): void {
    this.serverClose(1000, "");
  }

  deliver(frame: ServerInit): void {
    this.deliverMany([frame]);
  }

  /** Hands the frames over in one task, one message event after the other (no microtask between). */
  deliverMany(frames: ServerInit[]): void {
    if (this.readyState !== 1) return;
    const copies = frames.map((frame) => {
      const bytes = toBinary(ServerFrameSchema, create(ServerFrameSchema, frame));
      return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    });
    setTimeout(() => {
      for (const data of copies) (this.onmessage as ((e: object) => void) | null)?.({ data });
    }, 0);
  }

  serverClose(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => (this.onclose as ((e: object) => void) | null)?.({ code, reason }), 0);
  }
}
