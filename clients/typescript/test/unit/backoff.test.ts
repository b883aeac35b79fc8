import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffCap, backoffDelay, reconnectPolicy } from "../../src/backoff.js";

test("the cap doubles from the initial delay up to the maximum", () => {
  const p = reconnectPolicy({ initialDelayMs: 100, maxDelayMs: 5000 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 60].map((a) => backoffCap(p, a)), [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
});

test("full jitter: the delay is uniform in [0, cap)", () => {
  const p = reconnectPolicy({ initialDelayMs: 100, maxDelayMs: 5000 });
  assert.equal(backoffDelay(p, 3, 0), 0);
  assert.equal(backoffDelay(p, 3, 0.5), 400);
  assert.ok(backoffDelay(p, 3, 0.999999) < 800);
  assert.equal(backoffDelay(p, 3, 7), 800, "a unit outside [0,1] is clamped");
  // With Math.random, many clients spread over the whole range.
  const delays = Array.from({ length: 2000 }, () => backoffDelay(p, 10, Math.random()));
  assert.ok(Math.min(...delays) < 500 && Math.max(...delays) > 4500, "spread over [0, 5000)");
  assert.ok(delays.every((d) => d >= 0 && d < 5000));
  const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
  assert.ok(mean > 2200 && mean < 2800, `mean ${mean} near half the cap`);
});

test("defaults", () => {
  const p = reconnectPolicy();
  assert.equal(p.initialDelayMs, 100);
  assert.equal(p.maxDelayMs, 10_000);
  assert.equal(p.maxAttempts, Infinity);
});
