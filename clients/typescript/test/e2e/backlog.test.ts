/** The web chat's rule for which lines were missed and which were shown already (no browser needed). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backlog } from "../../examples/chat/backlog.js";

test("lines the SDK flags as catch-up are missed, the others live", () => {
  const b = new Backlog(0);
  b.joined(3);
  assert.deepEqual(
    [1, 2, 3, 4, 5].map((s) => b.classify(s, s <= 3)),
    ["missed", "missed", "missed", "live", "live"],
  );
  assert.equal(b.shownSeq, 5);
});

test("a line shown on an earlier visit is not shown again (an ack lost in a crash)", () => {
  const b = new Backlog(4);
  b.joined(6);
  assert.deepEqual(
    [3, 4, 5, 6, 7].map((s) => b.classify(s, s <= 6)),
    ["shown", "shown", "missed", "missed", "live"],
  );
});

test("a room made again (its last seq below what was shown) starts over", () => {
  const b = new Backlog(10);
  b.joined(2);
  assert.deepEqual(
    [1, 2, 3].map((s) => b.classify(s, s <= 2)),
    ["missed", "missed", "live"],
  );
});
