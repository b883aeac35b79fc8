// Fan-out of one Node process: C SDK clients in one room, one publisher at
// R msg/s for S seconds; every client must get every message. Prints the
// publish-to-handler latency (the send time travels in the payload), and the
// process's CPU time (user + system) per delivery from the first publish on.
//   node scripts/fanout.mjs ws://127.0.0.1:7421/ws [clients=1000] [rate=1000] [seconds=10]
// Needs `npm run build` first.
import WebSocket from "ws";
import { connect } from "../dist/index.js";

const [url = "ws://127.0.0.1:7421/ws", cArg = "1000", rArg = "1000", sArg = "10"] = process.argv.slice(2);
const clients = Number(cArg);
const rate = Number(rArg);
const seconds = Number(sArg);
const room = `fanout-${Date.now()}`;
const latencies = [];
const got = new Array(clients).fill(0);
const subs = [];
for (let i = 0; i < clients; i++) {
  const c = await connect(url, { WebSocket });
  const r = await c.join(room, { autoAck: true, ordered: false });
  r.on("tick", (data) => {
    const sent = new DataView(data.buffer, data.byteOffset, 8).getFloat64(0);
    latencies.push(performance.timeOrigin + performance.now() - sent);
    got[i]++;
  });
  subs.push(c);
}
const pub = await connect(url, { WebSocket, publishWindow: 1024 });
const total = rate * seconds;
const cpu0 = process.cpuUsage();
const started = performance.now();
const pending = [];
for (let n = 0; n < total; n++) {
  const due = started + (n * 1000) / rate;
  const wait = due - performance.now();
  if (wait > 1) await new Promise((r) => setTimeout(r, wait));
  const payload = new Uint8Array(128);
  new DataView(payload.buffer).setFloat64(0, performance.timeOrigin + performance.now());
  pending.push(pub.publish(room, "tick", payload));
}
await Promise.all(pending);
const deadline = performance.now() + 30_000;
while (got.some((g) => g < total) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
const cpu = process.cpuUsage(cpu0);
const wallSeconds = (performance.now() - started) / 1000;
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]?.toFixed(1);
console.log(JSON.stringify({ clients, rate, seconds, published: total, complete: got.every((g) => g === total), minGot: Math.min(...got), deliveries: latencies.length, p50Ms: q(0.5), p99Ms: q(0.99), maxMs: latencies.at(-1)?.toFixed(1), wallSeconds: Number(wallSeconds.toFixed(1)), cpuUsPerDelivery: Number(((cpu.user + cpu.system) / Math.max(1, latencies.length)).toFixed(2)) }));
for (const c of subs) c.close();
pub.close();
