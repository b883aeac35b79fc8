import assert from "node:assert/strict";
import { test } from "node:test";
import { planAcks } from "../../src/acks.js";

test("contiguous acks below everything outstanding become one cumulative ack", () => {
  assert.deepEqual(planAcks([3, 1, 2, 4], Infinity, true), [{ upTo: 4, seqs: [] }]);
});

test("up_to stops below a held or given-back seq; the rest are listed", () => {
  assert.deepEqual(planAcks([1, 2, 3, 6, 7], 5, true), [{ upTo: 3, seqs: [6, 7] }]);
  assert.deepEqual(planAcks([6, 7], 5, true), [{ upTo: 0, seqs: [6, 7] }]);
});

test("a single seq is listed, not sent as up_to", () => {
  assert.deepEqual(planAcks([4], Infinity, true), [{ upTo: 0, seqs: [4] }]);
});

test("a group's consumer never acks cumulatively", () => {
  assert.deepEqual(planAcks([1, 2, 3], Infinity, false), [{ upTo: 0, seqs: [1, 2, 3] }]);
});

test("at most 10,000 seqs per frame; duplicates removed", () => {
  const seqs = Array.from({ length: 25_000 }, (_, i) => 2 * i + 10);
  const plans = planAcks([...seqs, 10, 12], 0, true);
  assert.equal(plans.length, 3);
  assert.deepEqual(plans.map((p) => p.seqs.length), [10_000, 10_000, 5_000]);
  assert.equal(plans[0]?.upTo, 0);
  assert.deepEqual(planAcks([], Infinity, true), []);
});
