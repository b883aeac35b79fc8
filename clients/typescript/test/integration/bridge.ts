/**
 * Test-only: a WebSocket-to-TCP bridge that speaks the broker's WebSocket
 * framing (one binary message = one frame body, subprotocol roomq.v1) in
 * front of its TCP listener (4-byte big-endian length prefix). Used only
 * when ROOMQ_TEST_BRIDGE=1, to run these tests against a broker built
 * without the HTTP listener.
 */
import { createConnection } from "node:net";
import { WebSocketServer } from "ws";

export function startBridge(wsPort: number, tcpPort: number): () => Promise<void> {
  const server = new WebSocketServer({ host: "127.0.0.1", port: wsPort, path: "/ws", handleProtocols: (p) => (p.has("roomq.v1") ? "roomq.v1" : false) });
  server.on("connection", (ws) => {
    const tcp = createConnection({ host: "127.0.0.1", port: tcpPort });
    let buf = Buffer.alloc(0);
    tcp.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 4) {
        const n = buf.readUInt32BE(0);
        if (buf.length < 4 + n) break;
        ws.send(buf.subarray(4, 4 + n));
        buf = buf.subarray(4 + n);
      }
    });
    tcp.on("close", () => ws.close());
    tcp.on("error", () => ws.terminate());
    ws.on("message", (data: Buffer) => {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(data.length, 0);
      tcp.write(Buffer.concat([head, data]));
    });
    ws.on("close", () => tcp.end());
    ws.on("error", () => tcp.destroy());
  });
  return () =>
    new Promise<void>((resolve) => {
      for (const c of server.clients) c.terminate();
      server.close(() => resolve());
    });
}
