import assert from "node:assert/strict";
import { test } from "node:test";
import { BrokerError, ErrorCode, isRetryable } from "../../src/index.js";

test("isRetryable: false for the refusals that retrying cannot fix, true for the others and for unknown codes", () => {
  for (const name of ["UNSUPPORTED_VERSION", "INVALID_NAME", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "KICKED"] as const) {
    assert.equal(isRetryable(name), false, name);
    assert.equal(isRetryable(ErrorCode[name]), false, `${name} by number`);
  }
  for (const name of ["SHUTTING_DOWN", "IDLE_TIMEOUT", "QUOTA_EXCEEDED", "TOO_MANY_CONNECTIONS", "STORAGE_FAILURE", "HANDSHAKE_TIMEOUT", "MALFORMED_FRAME"] as const) {
    assert.equal(isRetryable(name), true, name);
  }
  assert.equal(isRetryable(999), true, "an unknown code");
  assert.equal(isRetryable(new BrokerError(ErrorCode.KICKED, "KICKED", "bye", true)), false);
  assert.equal(isRetryable(new BrokerError(ErrorCode.SHUTTING_DOWN, "SHUTTING_DOWN", "later", true)), true);
});
