import assert from "node:assert/strict";
import { test } from "node:test";
import { Filter, SHARED_ACKED_CAP } from "../../src/filter.js";

test("ordered mode hands each message once, in order", () => {
  const f = new Filter("ordered");
  assert.equal(f.offer(1, 0), "hand");
  assert.equal(f.offer(2, 0), "hand");
  assert.equal(f.offer(1, 0), "drop", "a redelivery of a held message is dropped");
  f.ack(1);
  assert.equal(f.offer(1, 0), "reack", "a redelivery of an acked message is acked again");
  f.ack(2);
  assert.equal(f.offer(2, 0), "reack");
  assert.equal(f.offer(3, 0), "hand");
  assert.deepEqual(f.held(), [3]);
});

test("ordered mode never hands a seq below one already handed unless it was given back", () => {
  const f = new Filter("ordered");
  assert.equal(f.offer(5, 0), "hand");
  assert.equal(f.offer(4, 0), "drop");
  f.release(5);
  assert.equal(f.offer(5, 0), "hand", "nacked: its redelivery passes once");
  assert.equal(f.offer(5, 0), "drop");
});

test("held too long: released, handed again once", () => {
  const f = new Filter("ordered");
  for (const s of [1, 2, 3]) f.offer(s, 0);
  assert.deepEqual(f.expireHeld(10), [1, 2, 3]);
  assert.equal(f.offer(3, 10), "hand");
  assert.equal(f.offer(3, 10), "drop");
});

test("the floor follows acks and the broker's next_seq", () => {
  const f = new Filter("ordered");
  for (let s = 1; s <= 100; s++) f.offer(s, 0);
  for (let s = 100; s >= 1; s--) f.ack(s);
  assert.equal(f.ackedFloor(), 101);
  f.advanceFloor(151);
  assert.equal(f.offer(120, 0), "reack");
  f.advanceFloor(10);
  assert.equal(f.ackedFloor(), 151, "the floor never moves back");
});

test("unordered mode passes redeliveries but not acked ones", () => {
  const f = new Filter("unordered");
  assert.equal(f.offer(5, 0), "hand");
  assert.equal(f.offer(5, 0), "hand");
  assert.equal(f.offer(4, 0), "hand");
  f.ack(5);
  assert.equal(f.offer(5, 0), "reack");
});

test("shared mode hands holes and lower seqs after a group handoff", () => {
  const f = new Filter("shared");
  for (const s of [2, 5, 9, 3, 4]) assert.equal(f.offer(s, 0), "hand");
  assert.equal(f.offer(5, 0), "drop");
  f.ack(5);
  assert.equal(f.offer(5, 0), "reack");
  f.release(9);
  assert.equal(f.offer(9, 0), "hand");
  assert.equal(f.offer(9, 0), "drop");
  assert.deepEqual(f.held(), [2, 3, 4, 9]);
});

test("why groups do not use ordered mode: a handoff's lower seqs would be lost", () => {
  const f = new Filter("ordered");
  assert.equal(f.offer(9, 0), "hand");
  assert.equal(f.offer(3, 0), "drop");
});

test("shared mode forgets the oldest acks past its cap", () => {
  const f = new Filter("shared");
  const last = 2 + SHARED_ACKED_CAP;
  for (let s = 2; s <= last; s++) {
    f.offer(s, 0);
    f.ack(s);
  }
  assert.equal(f.offer(2, 0), "hand", "forgotten: handed again");
  assert.equal(f.offer(last, 0), "reack");
});

test("a gap releases held seqs and moves the floor", () => {
  const f = new Filter("ordered");
  for (let s = 1; s <= 4; s++) f.offer(s, 0);
  f.release(4);
  f.skipped(1, 5);
  assert.deepEqual(f.held(), []);
  assert.equal(f.lowestOutstanding(), Infinity);
  assert.equal(f.ackedFloor(), 6);
  assert.equal(f.offer(5, 0), "reack");
  assert.equal(f.offer(6, 0), "hand");
  f.skipped(2, 3);
  assert.equal(f.ackedFloor(), 6);
});

test("lowestOutstanding covers held and given-back seqs", () => {
  const f = new Filter("ordered");
  for (let s = 1; s <= 5; s++) f.offer(s, 0);
  f.ack(1);
  f.ack(2);
  f.release(3);
  assert.equal(f.lowestOutstanding(), 3);
  f.offer(3, 0);
  f.ack(3);
  assert.equal(f.lowestOutstanding(), 4);
});
