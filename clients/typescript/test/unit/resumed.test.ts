import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, type RoomResumed } from "../../src/index.js";
import { FakeBroker } from "./fake.js";

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

function delivery(room: string, subscription: string, seq: number, text: string) {
  return {
    requestId: 0n,
    body: { case: "delivery" as const, value: { room, subscription, attempt: 1, message: { seq: BigInt(seq), event: "line", payload: new TextEncoder().encode(text), publisherSession: new Uint8Array(16) } } },
  };
}

test("a resume after a reconnect: the room says `resumed` with its position before the catch-up, which is flagged catchUp", async (t) => {
  const broker = new FakeBroker();
  const side = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  t.after(() => side.close());
  // The newest connection is the one the fake pushes on.
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "kim", reconnect: { initialDelayMs: 5, maxDelayMs: 10 } });
  t.after(() => client.close());
  await side.publish("general", "line", "one"); // seq 1: before the join
  const seen: string[] = [];
  // The first join's answer comes with seq 1 behind it, in the same read.
  broker.behindJoin = (room, sub) => [delivery(room, sub, 1, "one")];
  const room = await client.join("general");
  room.on("line", (_data, d) => {
    seen.push(`${d.seq}:${d.catchUp ? "catch-up" : "live"}`);
    void d.ack();
  });
  room.on("resumed", (r: RoomResumed) => seen.push(`resumed:${r.nextSeq}..${r.lastSeq}:${r.durable}`));
  broker.behindJoin = undefined;
  broker.push("general", "", 2, "line", "two"); // live: published after the join
  await wait(20);
  assert.deepEqual(seen, ["1:catch-up", "2:live"]);

  // Away: three more are stored; the resume's answer (cursor 3, last seq 5)
  // comes with them behind it in one read, as the broker sends them.
  side.close();
  broker.nextSeq.set("general", 3n);
  const other = await connect("ws://fake/ws", { WebSocket: broker.WebSocket });
  t.after(() => other.close());
  for (const t of ["a", "b", "c", "d"]) await other.publish("general", "line", t); // the fake's last seq: 1 + 4 = 5
  other.close();
  broker.behindJoin = (r, sub) => [delivery(r, sub, 3, "x"), delivery(r, sub, 4, "y"), delivery(r, sub, 5, "z")];
  const recovered = new Promise<void>((r) => client.once("recovered", () => r()));
  broker.dropAll();
  await recovered;
  broker.behindJoin = undefined;
  broker.push("general", "", 6, "line", "after");
  await wait(30);
  assert.deepEqual(seen, ["1:catch-up", "2:live", "resumed:3..5:true", "3:catch-up", "4:catch-up", "5:catch-up", "6:live"]);
  assert.equal(room.info.lastSeq, 5);
  client.close();
});

test("`resumed` and catchUp are reserved for the room: a message of event `resumed` goes to onAny", async (t) => {
  const broker = new FakeBroker();
  const client = await connect("ws://fake/ws", { WebSocket: broker.WebSocket, clientId: "lee" });
  t.after(() => client.close());
  const room = await client.join("r");
  const any: string[] = [];
  let resumed = 0;
  room.on("resumed", () => resumed++);
  room.onAny((event, _d, d) => void any.push(`${event}:${d.catchUp}`));
  broker.push("r", "", 1, "resumed", "not a notice");
  await wait(20);
  assert.deepEqual(any, ["resumed:false"]);
  assert.equal(resumed, 0);
  client.close();
});
