import assert from "node:assert/strict";
import { test } from "node:test";
import { GroupMode, MemberMode, StartPosition } from "../../src/gen/roomq_pb.js";
import { uuidBytes, uuidToString, uuidV7 } from "../../src/ids.js";
import { planJoin, resumeJoin } from "../../src/join.js";
import { durabilityName, planPublish } from "../../src/publish.js";
import { Durability } from "../../src/gen/roomq_pb.js";

test("join options map onto the Join request", () => {
  const { join, mode, label } = planJoin(
    "orders",
    { group: "billing", exclusive: true, backoffMs: [100, 1000, 0.2], maxDeliveries: 0, events: ["order.*"], presence: true, ordered: true, maxInFlight: 8, ackTimeoutMs: 1500 },
    false,
  );
  assert.equal(join.group, "billing");
  assert.equal(join.groupMode, GroupMode.EXCLUSIVE);
  assert.deepEqual(join.backoffMs, [100n, 1000n, 1n], "a step below 1 ms is sent as 1, never 0");
  assert.equal(join.maxDeliveries, 0);
  assert.deepEqual(join.events, ["order.*"]);
  assert.equal(join.presence, true);
  assert.equal(join.maxInFlight, 8);
  assert.equal(join.ackTimeoutMs, 1500n);
  assert.equal(join.mode, MemberMode.AUTO);
  assert.equal(mode, "shared", "groups never use ordered mode");
  assert.equal(label, "");
});

test("defaults: durable by client id is ordered, ephemeral is unordered", () => {
  assert.equal(planJoin("g", {}, true).mode, "ordered");
  assert.equal(planJoin("g", {}, false).mode, "unordered");
  assert.equal(planJoin("g", { subscription: "s" }, false).mode, "ordered");
  assert.equal(planJoin("g", { durable: false }, true).join.mode, MemberMode.EPHEMERAL);
  assert.equal(planJoin("g", {}, true).join.maxDeliveries, undefined);
});

test("start positions", () => {
  assert.equal(planJoin("r", { start: "earliest" }, true).join.start, StartPosition.EARLIEST);
  assert.equal(planJoin("r", { start: "new" }, true).join.start, StartPosition.NEW);
  const seq = planJoin("r", { start: { seq: 42 } }, true).join;
  assert.deepEqual([seq.start, seq.startSeq], [StartPosition.SEQ, 42n]);
  const t = planJoin("r", { start: { time: new Date(1_700_000_000_123) } }, true).join;
  assert.deepEqual([t.start, t.startTimeMs], [StartPosition.TIME, 1_700_000_000_123n]);
});

test("a resume joins from the stored cursor (an ephemeral membership from now on)", () => {
  const durable = resumeJoin(planJoin("r", { start: { seq: 5 }, maxDeliveries: 0 }, true).join);
  assert.equal(durable.start, StartPosition.RESUME);
  assert.equal(durable.startSeq, 0n);
  assert.equal(durable.maxDeliveries, 0, "settings are sent again on every join");
  const eph = resumeJoin(planJoin("r", { durable: false, start: "earliest" }, true).join);
  assert.equal(eph.start, StartPosition.NEW);
});

test("publish options map onto the Publish request", () => {
  const session = "0190f3c2-7d1e-7a00-8000-000000000001";
  const p = planPublish(["orders"], "order.created", new Uint8Array([1]), {
    rooms: ["audit"],
    key: "customer-7",
    ttlMs: 1.5,
    delayMs: 2000,
    exceptRooms: ["muted"],
    exceptSessions: [session],
    exceptSelf: true,
    headers: { lang: "en" },
  });
  assert.deepEqual(p.rooms, ["orders", "audit"]);
  assert.equal(p.ttlMs, 2n, "a TTL below a whole ms is rounded up, never 0");
  assert.equal(p.delayMs, 2000n);
  assert.deepEqual(p.exceptRooms, ["muted"]);
  assert.equal(uuidToString((p.exceptSessions ?? [])[0] as Uint8Array), session);
  assert.equal(p.exceptSelf, true);
  assert.equal((p.dedupId as Uint8Array).length, 16, "every stored publish carries a dedup id");
  const v = planPublish(["r"], "typing", new Uint8Array(), { volatile: true });
  assert.equal(v.dedupId, undefined, "a volatile publish carries none");
  const fixed = planPublish(["r"], "e", new Uint8Array(), { dedupId: session });
  assert.equal(uuidToString(fixed.dedupId as Uint8Array), session);
});

test("uuids", () => {
  const a = uuidV7(1_700_000_000_000);
  assert.equal(a.length, 16);
  assert.equal((a[6] ?? 0) >> 4, 7, "version 7");
  assert.equal((a[8] ?? 0) >> 6, 2, "RFC variant");
  assert.deepEqual(uuidBytes(uuidToString(a)), a);
  assert.throws(() => uuidBytes("nope"), TypeError);
  assert.notDeepEqual(uuidV7(), uuidV7());
  assert.equal(durabilityName(Durability.BATCHED), "batched");
});
