import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { textCodec, type Delivery, type RecoveredInfo, type RoomResumed, type WebSocketConstructor } from "../../src/index.js";
import { Broker, until, wait } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("a durable member that was away gets what it missed, in order, once (new client, same client id)", async () => {
  const pub = await broker.client({ codec: textCodec });
  const first = await broker.client({ clientId: "resume-dana", codec: textCodec });
  const r1 = await first.join("resume-general");
  const got1: string[] = [];
  r1.on("chat message", async (t, d) => {
    got1.push(t);
    await d.ack();
  });
  await pub.publish("resume-general", "chat message", "a");
  await until(() => got1.length === 1);
  await wait(50); // let the ack be confirmed
  first.close(); // the tab closes
  for (const t of ["b", "c", "d"]) await pub.publish("resume-general", "chat message", t);
  const second = await broker.client({ clientId: "resume-dana", codec: textCodec });
  const r2 = await second.join("resume-general");
  const got2: Array<[string, number]> = [];
  r2.on("chat message", async (t, d) => {
    got2.push([t, d.seq]);
    await d.ack();
  });
  await until(() => got2.length === 3);
  await wait(200);
  assert.deepEqual(got2, [
    ["b", 2],
    ["c", 3],
    ["d", 4],
  ]);
});

test("after a broker crash the client reconnects, resumes its rooms, and misses nothing", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "resume-erin", codec: textCodec });
  const room = await c.join("resume-crash");
  const got: number[] = [];
  room.on("e", async (_t, d) => {
    got.push(d.seq);
    await d.ack();
  });
  for (let i = 1; i <= 5; i++) await pub.publish("resume-crash", "e", `m${i}`);
  await until(() => got.length === 5);
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  await broker.restart();
  const info = await recovered;
  assert.deepEqual(
    info.resumed.map((r) => r.room),
    ["resume-crash"],
  );
  // pub reconnects by itself too.
  for (let i = 6; i <= 10; i++) await pub.publish("resume-crash", "e", `m${i}`);
  await until(() => got.includes(10), 10_000, "the messages after the restart");
  await wait(200);
  // Acks lost in the crash may bring some back, but ordered mode never hands a seq twice.
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

test("unacknowledged deliveries come back after a reconnect; ordered mode hands them once", async () => {
  const pub = await broker.client({ codec: textCodec });
  const c = await broker.client({ clientId: "resume-fay", codec: textCodec });
  const room = await c.join("resume-unacked");
  const held: Delivery<string>[] = [];
  room.on("e", (_t, d) => void held.push(d));
  await pub.publish("resume-unacked", "e", "x");
  await until(() => held.length === 1);
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  await broker.restart();
  await recovered;
  await wait(300);
  assert.equal(held.length, 1, "the redelivery of a held message is not handed again");
  await held[0]?.ack();
  await pub.publish("resume-unacked", "e", "y");
  await until(() => held.length === 2);
  assert.equal(held[1]?.seq, 2);
});

/**
 * A WebSocket class whose connections the test can cut, and which reaches
 * nothing (a closed port) while `offline`: one client loses its
 * connection while the broker and the other clients stay up.
 */
class Switch {
  offline = false;
  private readonly sockets = new Set<WebSocket>();
  readonly WebSocket: WebSocketConstructor;

  constructor(deadUrl: string) {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const sw = this;
    this.WebSocket = class extends WebSocket {
      constructor(url: string, protocols: string) {
        super(sw.offline ? deadUrl : url, protocols);
        sw.sockets.add(this);
      }
    } as unknown as WebSocketConstructor;
  }

  /** Goes offline and kills the open connections (no close handshake). */
  cut(): void {
    this.offline = true;
    for (const s of this.sockets) s.terminate();
    this.sockets.clear();
  }
}

test("a membership joined again after a reconnect emits `resumed` first, then what it missed flagged catchUp", async () => {
  const pub = await broker.client({ codec: textCodec });
  const sw = new Switch("ws://127.0.0.1:1/ws");
  const c = await broker.client({ clientId: "resume-gus", codec: textCodec, WebSocket: sw.WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
  const room = await c.join("resume-flag");
  const seen: string[] = [];
  const resumes: RoomResumed[] = [];
  room.on("e", async (t, d) => {
    seen.push(`${t}:${d.catchUp ? "catch-up" : "live"}`);
    await d.ack();
  });
  room.on("resumed", (r) => {
    resumes.push(r);
    seen.push("resumed");
  });
  await pub.publish("resume-flag", "e", "a");
  await until(() => seen.length === 1, 5000, "the first line");
  await wait(50); // the ack is confirmed
  const down = new Promise<void>((r) => c.once("disconnect", () => r()));
  sw.cut();
  await down;
  for (const t of ["b", "c", "d"]) await pub.publish("resume-flag", "e", t);
  const recovered = new Promise<RecoveredInfo>((r) => c.once("recovered", r));
  sw.offline = false;
  await recovered;
  await until(() => seen.length === 5, 5000, "the lines missed");
  await pub.publish("resume-flag", "e", "e");
  await until(() => seen.length === 6, 5000, "a live line");
  assert.deepEqual(seen, ["a:live", "resumed", "b:catch-up", "c:catch-up", "d:catch-up", "e:live"]);
  assert.deepEqual(resumes, [{ room: "resume-flag", subscription: "", durable: true, nextSeq: 2, lastSeq: 4 }]);
});
