import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { PresenceChange } from "../../src/index.js";
import { Broker, until } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

test("members() lists who is in the room; presence events tell joins and leaves", async () => {
  const alice = await broker.client({ clientId: "p-alice", clientName: "Alice" });
  const room = await alice.join("presence-lobby", { presence: true });
  const events: PresenceChange[] = [];
  room.on("presence", (p) => void events.push(p));
  const bob = await broker.client({ clientId: "p-bob", clientName: "Bob" });
  const bobRoom = await bob.join("presence-lobby");
  await until(() => events.length === 1, 5000, "the joined event");
  assert.equal(events[0]?.kind, "joined");
  assert.equal(events[0]?.member.clientName, "Bob");
  assert.equal(events[0]?.member.sessionId, bob.sessionId);
  const members = await room.members();
  assert.deepEqual(members.map((m) => m.clientName).sort(), ["Alice", "Bob"]);
  assert.ok(members.every((m) => m.durable));
  await bobRoom.leave();
  await until(() => events.length === 2, 5000, "the left event");
  assert.equal(events[1]?.kind, "left");
  assert.equal((await alice.members("presence-lobby")).length, 1);
});

test("except a session: exceptSessions takes a member's session id", async () => {
  const a = await broker.client({ clientId: "x-a" });
  const b = await broker.client({ clientId: "x-b" });
  const rb = await b.join("presence-except", { autoAck: true });
  const got: string[] = [];
  rb.on("e", (_d, d) => void got.push(d.text()));
  const [bMember] = (await a.members("presence-except")).filter((m) => m.clientId === "x-b");
  assert.ok(bMember);
  await a.publish("presence-except", "e", "hidden", { exceptSessions: [bMember.sessionId] });
  await a.publish("presence-except", "e", "seen");
  await until(() => got.length === 1);
  assert.deepEqual(got, ["seen"]);
});
