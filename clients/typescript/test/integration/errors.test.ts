import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { BrokerError, ErrorCode, connect, isBrokerError, type RoomClosed, type WebSocketConstructor } from "../../src/index.js";
import { Broker, TOKENS, until } from "./broker.js";

let broker: Broker;
before(async () => {
  broker = await Broker.start();
});
after(async () => {
  await broker.stop();
});

const WS = WebSocket as unknown as WebSocketConstructor;

async function refused(p: Promise<unknown>, code: number, name: string): Promise<BrokerError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof BrokerError, `a BrokerError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.codeName, name);
    assert.ok(isBrokerError(e, code));
    return e;
  }
  assert.fail(`expected ${name}`);
}

test("handshake refusals reject connect(): UNAUTHENTICATED, NOT_FOUND, INVALID_NAME", async () => {
  const e = await refused(connect(broker.url, { WebSocket: WS, namespace: "/secure" }), ErrorCode.UNAUTHENTICATED, "UNAUTHENTICATED");
  assert.equal(e.fatal, true);
  await refused(connect(broker.url, { WebSocket: WS, namespace: "/secure", token: "rq_wrong" }), ErrorCode.UNAUTHENTICATED, "UNAUTHENTICATED");
  await refused(connect(broker.url, { WebSocket: WS, namespace: "/nope" }), ErrorCode.NOT_FOUND, "NOT_FOUND");
  await refused(connect(broker.url, { WebSocket: WS, clientId: "bad\u0001id" }), ErrorCode.INVALID_NAME, "INVALID_NAME");
});

test("PERMISSION_DENIED outside the token's room patterns", async () => {
  const c = await broker.client({ namespace: "/secure", token: TOKENS.secure });
  await c.publish("pub-ok", "e", "fine");
  await refused(c.publish("elsewhere", "e", "x"), ErrorCode.PERMISSION_DENIED, "PERMISSION_DENIED");
  await refused(c.join("pub-ok"), ErrorCode.PERMISSION_DENIED, "PERMISSION_DENIED");
  await c.join("sub-ok");
});

test("INVALID_NAME, INVALID_REQUEST, PRECONDITION_FAILED, ALREADY_JOINED", async () => {
  const c = await broker.client({ clientId: "err-ivy" });
  await refused(c.publish("bad\u0007room", "e", "x"), ErrorCode.INVALID_NAME, "INVALID_NAME");
  await refused(c.publish("err-r", "e", "x", { volatile: true, ttlMs: 10 }), ErrorCode.INVALID_REQUEST, "INVALID_REQUEST");
  await refused(c.publish(["err-r", "err-s"], "e", "x", { expectedLastSeq: 0 }), ErrorCode.INVALID_REQUEST, "INVALID_REQUEST");
  const first = await c.publish("err-cas", "e", "x", { expectedLastSeq: 0 });
  assert.equal(first.seq, 1, "an explicit 0 means: the room is empty");
  await refused(c.publish("err-cas", "e", "y", { expectedLastSeq: 0 }), ErrorCode.PRECONDITION_FAILED, "PRECONDITION_FAILED");
  await c.publish("err-cas", "e", "y", { expectedLastSeq: 1 });
  await c.join("err-joined");
  // The same durable membership (the client id) under an explicit label.
  await refused(c.join("err-joined", { subscription: "err-ivy" }), ErrorCode.ALREADY_JOINED, "ALREADY_JOINED");
});

test("MESSAGE_TOO_LARGE over max_frame_bytes − 1,024; QUOTA_EXCEEDED over a namespace quota", async () => {
  const c = await broker.client();
  // The test broker's max_frame_bytes is 65,536.
  await refused(c.publish("err-big", "e", new Uint8Array(65_000)), ErrorCode.MESSAGE_TOO_LARGE, "MESSAGE_TOO_LARGE");
  await c.publish("err-big", "e", new Uint8Array(60_000));
  const small = await broker.client({ namespace: "/small" });
  await refused(small.publish("r", "e", new Uint8Array(100)), ErrorCode.QUOTA_EXCEEDED, "QUOTA_EXCEEDED");
});

test("MEMBERSHIP_TAKEN_OVER: the room of the session that lost its durable membership closes", async () => {
  const a = await broker.client({ clientId: "err-twin" });
  const ra = await a.join("err-takeover");
  const closed: RoomClosed[] = [];
  const errors: BrokerError[] = [];
  ra.on("closed", (c) => void closed.push(c));
  a.on("error", (e) => {
    if (e instanceof BrokerError) errors.push(e);
  });
  const b = await broker.client({ clientId: "err-twin" });
  await b.join("err-takeover");
  await until(() => closed.length + errors.length > 0, 5000, "the takeover push");
  const error = closed[0]?.error ?? errors[0];
  assert.ok(error instanceof BrokerError);
  assert.equal(error.code, ErrorCode.MEMBERSHIP_TAKEN_OVER);
});
