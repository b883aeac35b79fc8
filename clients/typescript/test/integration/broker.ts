/**
 * A real roomqd for integration tests: started on free ports with a
 * temporary data directory, reached over WebSocket, killed (SIGKILL for
 * crash tests) and restarted on the same data directory and ports.
 * The binary is `$ROOMQD`, default `../../target/debug/roomqd` (from
 * clients/typescript).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import WebSocket from "ws";
import { connect, type Client, type ConnectOptions, type WebSocketConstructor } from "../../src/index.js";

export const ROOMQD = process.env["ROOMQD"] ?? resolve(process.cwd(), "../../target/debug/roomqd");

/** Tokens the test config accepts. */
export const TOKENS = {
  secure: "rq_secure_app_token_for_tests",
  admin: "rq_admin_token_for_tests",
};

const sha256 = (t: string) => `sha256:${createHash("sha256").update(t).digest("hex")}`;

/** The config every test broker runs with. */
function config(): string {
  return `
[limits]
max_frame_bytes = 65536
max_pending_bytes = 67108864

[storage]
retention_interval_ms = 100

[namespaces."/"]
open = true
[[namespaces."/".retention]]
rooms = "trim*"
max_messages = 2

[namespaces."/secure"]
open = false
[[namespaces."/secure".tokens]]
name = "app"
hash = "${sha256(TOKENS.secure)}"
publish = ["pub*"]
subscribe = ["sub*"]

[namespaces."/small"]
open = true
[namespaces."/small".quotas]
max_message_bytes = 64

[[admin.tokens]]
name = "ops"
hash = "${sha256(TOKENS.admin)}"
`;
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export class Broker {
  readonly dataDir: string;
  readonly tcpPort: number;
  readonly httpPort: number;
  private child: ChildProcess | undefined;
  private log = "";
  private readonly clients = new Set<Client<never>>();

  private constructor(dataDir: string, tcpPort: number, httpPort: number) {
    this.dataDir = dataDir;
    this.tcpPort = tcpPort;
    this.httpPort = httpPort;
  }

  static async start(): Promise<Broker> {
    const broker = await Broker.prepare();
    await broker.spawn();
    return broker;
  }

  /** A broker with its ports and data directory chosen, not started yet: start it with `launch`. */
  static async prepare(): Promise<Broker> {
    if (!existsSync(ROOMQD)) throw new Error(`no roomqd at ${ROOMQD}: build it (cargo build --bin roomqd) or set ROOMQD`);
    const dir = mkdtempSync(join(tmpdir(), "roomq-ts-"));
    writeFileSync(join(dir, "roomq.toml"), config());
    return new Broker(dir, await freePort(), await freePort());
  }

  /** Starts a prepared broker and waits until it is ready. */
  async launch(): Promise<void> {
    await this.spawn();
  }

  /** The WebSocket URL. */
  get url(): string {
    return `ws://127.0.0.1:${this.httpPort}/ws`;
  }

  /** A client of this broker (closed by `stop`). */
  async client<T = Uint8Array | string>(options: ConnectOptions<T> = {}): Promise<Client<T>> {
    const c = await connect<T>(this.url, { WebSocket: WebSocket as unknown as WebSocketConstructor, reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...options });
    this.clients.add(c as unknown as Client<never>);
    return c;
  }

  private async spawn(): Promise<void> {
    const args = ["--config", join(this.dataDir, "roomq.toml"), "--listen", `127.0.0.1:${this.tcpPort}`, "--http-listen", `127.0.0.1:${this.httpPort}`, "--data-dir", join(this.dataDir, "data")];
    const child = spawn(ROOMQD, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const keep = (chunk: Buffer) => {
      this.log = (this.log + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`roomqd exited with ${child.exitCode}:\n${this.log}`);
      try {
        const res = await fetch(`http://127.0.0.1:${this.httpPort}/readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`roomqd not ready within 15 s:\n${this.log}`);
  }

  /** Kills the broker (SIGKILL by default, a crash) and waits for it to exit. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill(signal);
    await exited;
  }

  /** Starts it again on the same data directory and ports. */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  /** The broker's recent log, for failure messages. */
  recentLog(): string {
    return this.log;
  }

  /** Closes the clients, stops the broker and deletes its data. */
  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    this.clients.clear();
    await this.kill("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

export const wait = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolves when `check` is true, polling; rejects after `ms`. */
export async function until(check: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}
