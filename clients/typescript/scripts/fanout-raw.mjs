// The floor under scripts/fanout.mjs: C bare `ws` sockets in one room (the
// handshake and join written by hand, then only counting delivery frames and
// acking cumulatively every 100), one SDK publisher at R msg/s for S seconds.
// Prints the process's CPU time (user + system) per delivery from the first
// publish on. No decoding, no Delivery objects, no handlers: what the same
// process costs without the SDK on the receiving side.
//   node scripts/fanout-raw.mjs ws://127.0.0.1:7421/ws [clients=1000] [rate=1000] [seconds=10]
// Needs `npm run build` first.
import WebSocket from "ws";
import { connect } from "../dist/index.js";
import { encodeClientFrame } from "../dist/codec.js";

const [url = "ws://127.0.0.1:7421/ws", cArg = "1000", rArg = "1000", sArg = "10"] = process.argv.slice(2);
const clients = Number(cArg);
const rate = Number(rArg);
const seconds = Number(sArg);
const room = `fanout-raw-${Date.now()}`;
let got = 0;

function member() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, "roomq.v1");
    ws.binaryType = "nodebuffer";
    let frames = 0;
    let deliveries = 0;
    let id = 3n;
    ws.on("error", reject);
    ws.on("open", () => ws.send(encodeClientFrame({ requestId: 1n, body: { case: "handshake", value: { protocolVersion: 1, namespace: "/" } } })));
    ws.on("message", (data) => {
      frames++;
      if (frames === 1) ws.send(encodeClientFrame({ requestId: 2n, body: { case: "join", value: { room } } }));
      else if (frames === 2) resolve(ws);
      else if (data[0] === 0x4a) {
        // A push whose body is a Delivery (field 9): the seqs of a new member start at 1.
        got++;
        if (++deliveries % 100 === 0) ws.send(encodeClientFrame({ requestId: id++, body: { case: "ack", value: { room, upTo: BigInt(deliveries) } } }));
      }
    });
  });
}

const sockets = [];
for (let i = 0; i < clients; i++) sockets.push(await member());
const pub = await connect(url, { WebSocket, publishWindow: 1024 });
const total = rate * seconds;
const cpu0 = process.cpuUsage();
const started = performance.now();
const pending = [];
for (let n = 0; n < total; n++) {
  const wait = started + (n * 1000) / rate - performance.now();
  if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  pending.push(pub.publish(room, "tick", new Uint8Array(128)));
}
await Promise.all(pending);
const deadline = performance.now() + 30_000;
while (got < total * clients && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
const cpu = process.cpuUsage(cpu0);
const wallSeconds = (performance.now() - started) / 1000;
console.log(JSON.stringify({ clients, rate, seconds, deliveries: got, complete: got === total * clients, wallSeconds: Number(wallSeconds.toFixed(1)), cpuUsPerDelivery: Number(((cpu.user + cpu.system) / Math.max(1, got)).toFixed(2)) }));
for (const s of sockets) s.terminate();
pub.close();
