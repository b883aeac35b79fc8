import assert from "node:assert/strict";
import { test } from "node:test";
import { Outbox } from "../../src/outbox.js";

const ids = (xs: Array<{ payload: string }>) => xs.map((e) => e.payload);

test("publishes within the window go out at once; the rest wait in order", () => {
  const o = new Outbox<string>({ window: 2, offlineMax: 10, overflow: "reject-new" });
  o.connectedReady();
  assert.deepEqual(ids(o.submit("a", true).effects.send), ["a"]);
  assert.deepEqual(ids(o.submit("b", true).effects.send), ["b"]);
  const c = o.submit("c", true);
  assert.deepEqual(c.effects.send, []);
  assert.equal(o.queued, 1);
  const first = o.list()[0];
  assert.ok(first);
  assert.deepEqual(ids(o.settled(first.id).send), ["c"], "a reply frees a slot");
  assert.equal(o.size, 2);
});

test("a lost connection: stored publishes are sent again first, with the same payload (dedup id); volatile ones fail", () => {
  const o = new Outbox<string>({ window: 4, offlineMax: 10, overflow: "reject-new" });
  o.connectedReady();
  const a = o.submit("a", true).entry;
  const v = o.submit("v", false).entry;
  const b = o.submit("b", true).entry;
  const lost = o.disconnected();
  assert.deepEqual(lost.fail.map((f) => [f.entry.payload, f.reason]), [["v", "connection-lost"]]);
  assert.equal(a.state, "unconfirmed");
  // Made while offline: queued.
  const c = o.submit("c", true);
  assert.deepEqual(c.effects.send, []);
  // Volatile while offline: refused at once.
  assert.deepEqual(o.submit("w", false).effects.fail.map((f) => f.reason), ["not-connected"]);
  const back = o.connectedReady();
  assert.deepEqual(ids(back.send), ["a", "b", "c"], "unconfirmed first, in order, then queued");
  assert.equal(a.sends, 2);
  assert.equal(b.sends, 2);
  assert.equal(v.state, "sent", "the volatile entry is gone from the outbox");
  assert.equal(o.get(v.id), undefined);
});

test("several losses in a row keep every unconfirmed publish exactly once", () => {
  const o = new Outbox<number>({ window: 3, offlineMax: 100, overflow: "reject-new" });
  o.connectedReady();
  for (let i = 0; i < 5; i++) o.submit(i, true);
  o.disconnected();
  o.connectedReady();
  o.disconnected();
  const again = o.connectedReady();
  assert.deepEqual(again.send.map((e) => e.payload), [0, 1, 2], "the window still bounds what is in flight");
  for (const e of again.send) o.settled(e.id);
  assert.equal(o.size, 2);
});

test("offline queue full: reject-new refuses the new publish", () => {
  const o = new Outbox<string>({ window: 4, offlineMax: 2, overflow: "reject-new" });
  o.submit("a", true);
  o.submit("b", true);
  const c = o.submit("c", true);
  assert.deepEqual(c.effects.fail.map((f) => [f.entry.payload, f.reason]), [["c", "offline-queue-full"]]);
  assert.equal(o.size, 2);
});

test("offline queue full: drop-oldest refuses the oldest waiting publish", () => {
  const o = new Outbox<string>({ window: 4, offlineMax: 2, overflow: "drop-oldest" });
  o.submit("a", true);
  o.submit("b", true);
  const c = o.submit("c", true);
  assert.deepEqual(c.effects.fail.map((f) => [f.entry.payload, f.reason]), [["a", "offline-queue-full"]]);
  assert.deepEqual(ids(o.connectedReady().send), ["b", "c"]);
});

test("unconfirmed publishes do not count against the offline bound", () => {
  const o = new Outbox<string>({ window: 4, offlineMax: 1, overflow: "reject-new" });
  o.connectedReady();
  o.submit("a", true);
  o.submit("b", true);
  o.disconnected();
  assert.deepEqual(o.submit("c", true).effects.fail, []);
  assert.equal(o.submit("d", true).effects.fail.length, 1);
});

test("a cancelled (timed-out) publish frees its slot and is never re-sent", () => {
  const o = new Outbox<string>({ window: 1, offlineMax: 10, overflow: "reject-new" });
  o.connectedReady();
  const a = o.submit("a", true).entry;
  o.submit("b", true);
  assert.deepEqual(ids(o.cancel(a.id).send), ["b"]);
  o.disconnected();
  assert.deepEqual(ids(o.connectedReady().send), ["b"]);
  assert.deepEqual(o.settled(a.id), { send: [], fail: [] }, "a late reply is ignored");
});

test("drain returns everything", () => {
  const o = new Outbox<string>({ window: 1, offlineMax: 10, overflow: "reject-new" });
  o.connectedReady();
  o.submit("a", true);
  o.submit("b", true);
  assert.deepEqual(ids(o.drain()), ["a", "b"]);
  assert.equal(o.size, 0);
});

test("many queued publishes drain in linear time", () => {
  const o = new Outbox<number>({ window: 256, offlineMax: 1_000_000, overflow: "reject-new" });
  o.connectedReady();
  const sent: number[] = [];
  const ids: number[] = [];
  for (let i = 0; i < 100_000; i++) {
    const { entry, effects } = o.submit(i, true);
    ids.push(entry.id);
    for (const e of effects.send) sent.push(e.payload);
  }
  for (const id of ids) for (const e of o.settled(id).send) sent.push(e.payload);
  assert.equal(sent.length, 100_000);
  assert.deepEqual(sent.slice(0, 3), [0, 1, 2]);
  assert.equal(sent[99_999], 99_999);
});
