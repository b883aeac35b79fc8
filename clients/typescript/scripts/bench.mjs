// Publish throughput of one Node client over WebSocket:
//   node scripts/bench.mjs ws://127.0.0.1:7421/ws [count=200000] [window=256] [size=128]
// Publishes `count` messages of `size` bytes with `window` in flight and
// prints confirmed messages per second, and the client's CPU time (user +
// system, from process.cpuUsage) per message. Needs `npm run build` first.
import WebSocket from "ws";
import { connect } from "../dist/index.js";

const [url = "ws://127.0.0.1:7421/ws", countArg = "200000", windowArg = "256", sizeArg = "128"] = process.argv.slice(2);
const count = Number(countArg);
const window = Number(windowArg);
const payload = new Uint8Array(Number(sizeArg)).fill(97);
const client = await connect(url, { WebSocket, publishWindow: window, offlineQueue: { max: count } });
const room = `bench-${Date.now()}`;
const cpu0 = process.cpuUsage();
const started = performance.now();
let done = 0;
const inflight = [];
for (let i = 0; i < count; i++) {
  inflight.push(client.publish(room, "bench", payload).then(() => void done++));
  if (inflight.length >= window * 4) await Promise.all(inflight.splice(0));
}
await Promise.all(inflight);
const secs = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuUsPerMsg = Number(((cpu.user + cpu.system) / done).toFixed(2));
console.log(JSON.stringify({ count: done, window, size: payload.length, seconds: Number(secs.toFixed(3)), msgPerSec: Math.round(done / secs), cpuUsPerMsg }));
client.close();
