/**
 * The web chat end to end, in real headless Chromium (Debian's `chromium`,
 * driven by playwright-core): a roomqd started here on free ports with a
 * temporary data directory serves the chat freshly built from
 * examples/chat (ROOMQ_HTTP_STATIC_DIR), so this tests the current sources
 * without a Rust build.
 *
 * Alice and Bob (two browser contexts, so two localStorages) chat in
 * `general`; Bob's page closes; Alice sends three lines; the broker is
 * killed with SIGKILL and started again on the same data directory and
 * ports; Bob comes back in a new page and sees exactly those three lines,
 * in order, marked "(while you were away)", once. Carol picks her nickname
 * while the broker is down and is connected once it is back (the SDK
 * retries the first connection). Screenshots go to
 * target/e2e/ at the repository root.
 *
 * Environment: ROOMQD (default ../../target/debug/roomqd from
 * clients/typescript), CHROMIUM (default /usr/bin/chromium).
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

const PKG = fileURLToPath(new URL("../../../", import.meta.url)); // build/test/e2e -> clients/typescript
const REPO = resolve(PKG, "../..");
const ROOMQD = process.env["ROOMQD"] ?? join(REPO, "target/debug/roomqd");
const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
const SHOTS = join(REPO, "target/e2e");
/** Every single wait in the browser is bounded by this (ms). */
const WAIT_MS = 15_000;

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const a = server.address();
      const port = typeof a === "object" && a ? a.port : 0;
      server.close(() => ok(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One roomqd process on fixed ports and a data directory that outlive it. */
class Broker {
  private child: ChildProcess | undefined;
  log = "";

  constructor(
    readonly dataDir: string,
    readonly staticDir: string,
    readonly tcpPort: number,
    readonly httpPort: number,
  ) {}

  get base(): string {
    return `http://127.0.0.1:${this.httpPort}/`;
  }

  async start(): Promise<void> {
    const child = spawn(ROOMQD, ["--listen", `127.0.0.1:${this.tcpPort}`, "--http-listen", `127.0.0.1:${this.httpPort}`, "--data-dir", this.dataDir], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ROOMQ_HTTP_STATIC_DIR: this.staticDir },
    });
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
        const res = await fetch(`${this.base}readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`roomqd not ready within 15 s:\n${this.log}`);
  }

  /** SIGKILL: no drain, no final flush. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((ok) => child.once("exit", () => ok()));
    child.kill("SIGKILL");
    await Promise.race([exited, sleep(5_000)]);
  }
}

interface Line {
  seq: string;
  nick: string;
  text: string;
  missed: boolean;
}

/** The lines of the room shown on a page, top to bottom. */
function lines(page: Page): Promise<Line[]> {
  return page.$$eval("[data-testid=messages] [data-testid=message]", (items) =>
    items.map((li) => ({
      seq: (li as HTMLElement).dataset["seq"] ?? "",
      nick: li.querySelector(".nick")?.textContent ?? "",
      text: li.querySelector(".text")?.textContent ?? "",
      missed: (li as HTMLElement).dataset["missed"] === "true" && (li.textContent ?? "").includes("(while you were away)"),
    })),
  );
}

async function waitForLines(page: Page, n: number, what: string): Promise<Line[]> {
  try {
    await page.waitForFunction((count) => document.querySelectorAll("[data-testid=messages] [data-testid=message]").length >= count, n, { timeout: WAIT_MS });
  } catch (e) {
    throw new Error(`${what}: fewer than ${n} lines within ${WAIT_MS} ms: ${JSON.stringify(await lines(page))}`, { cause: e });
  }
  return lines(page);
}

async function waitForState(page: Page, state: string): Promise<void> {
  await page.waitForSelector(`[data-testid=connection-state][data-state=${state}]`, { state: "attached", timeout: WAIT_MS });
}

async function waitForText(page: Page, selector: string, text: string): Promise<void> {
  await page.waitForFunction(
    ([sel, t]) => Array.from(document.querySelectorAll(sel)).some((e) => (e.textContent ?? "").includes(t)),
    [selector, text] as const,
    { timeout: WAIT_MS },
  );
}

/** Loads the chat page; page errors and console errors go to `errors`. */
async function loadChat(context: BrowserContext, base: string, nick: string, errors: string[]): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (e) => errors.push(`${nick}: page error: ${e.message}`));
  page.on("console", (m) => {
    // The browser reports each refused WebSocket attempt while the broker is down; those are expected.
    if (m.type() === "error" && !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(m.text())) errors.push(`${nick}: console: ${m.text()}`);
  });
  await page.goto(base, { timeout: WAIT_MS });
  return page;
}

/** Opens the chat; enters `nick` unless the page remembered one and entered by itself. */
async function openChat(context: BrowserContext, base: string, nick: string, errors: string[]): Promise<Page> {
  const page = await loadChat(context, base, nick, errors);
  if (await page.isVisible("[data-testid=nickname]")) {
    await page.fill("[data-testid=nickname]", nick);
    await page.press("[data-testid=nickname]", "Enter");
  }
  await waitForState(page, "connected");
  await page.waitForSelector("[data-testid=messages]", { timeout: WAIT_MS });
  await page.waitForSelector("#room-list li.joined button.open:not(:has(.hint))", { timeout: WAIT_MS }); // joined, not "joining…"
  return page;
}

async function say(page: Page, text: string): Promise<void> {
  await page.fill("[data-testid=message-input]", text);
  await page.click("[data-testid=send]");
}

/** Waits until every own line of the page is confirmed (has its seq). */
async function confirmed(page: Page): Promise<void> {
  await page.waitForFunction(() => Array.from(document.querySelectorAll<HTMLElement>("[data-testid=message].own")).every((li) => li.dataset["seq"] !== ""), undefined, {
    timeout: WAIT_MS,
  });
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true, timeout: WAIT_MS });
}

let broker: Broker | undefined;
let browser: Browser | undefined;
let work = "";

before(async () => {
  if (!existsSync(ROOMQD)) throw new Error(`no roomqd at ${ROOMQD}: build it (cargo build --bin roomqd) or set ROOMQD`);
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium, or set CHROMIUM`);
  work = mkdtempSync(join(tmpdir(), "roomq-e2e-"));
  const staticDir = join(work, "web");
  execFileSync(process.execPath, [join(PKG, "scripts/build-chat.mjs"), staticDir], { stdio: "inherit", timeout: 60_000 });
  mkdirSync(SHOTS, { recursive: true });
  broker = new Broker(join(work, "data"), staticDir, await freePort(), await freePort());
  await broker.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    // Playwright gives the browser a fresh temporary profile (user-data dir) and removes it on close.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await Promise.race([browser?.close().catch(() => undefined), sleep(10_000)]);
  await broker?.kill();
  if (work) rmSync(work, { recursive: true, force: true });
});

test("two people chat; the one who was away gets the three lines they missed across a broker SIGKILL, in order, once", { timeout: 100_000 }, async () => {
  try {
    await scenario();
  } catch (e) {
    // What the pages showed and what the broker said, for whoever reads the failure.
    for (const [i, page] of (browser?.contexts() ?? []).flatMap((c) => c.pages()).entries()) await shot(page, `failed-${i}`).catch(() => undefined);
    console.error(`roomqd's log:\n${broker?.log ?? ""}`);
    throw e;
  }
});

async function scenario(): Promise<void> {
  assert.ok(broker && browser);
  const errors: string[] = [];
  const aliceContext = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const bobContext = await browser.newContext({ viewport: { width: 1000, height: 640 } });

  // Both join general (the default room) and chat.
  const alice = await openChat(aliceContext, broker.base, "alice", errors);
  const bob = await openChat(bobContext, broker.base, "bob", errors);
  await waitForText(alice, "[data-testid=messages] [data-testid=notice]", "bob joined");

  await say(alice, "hello bob");
  await say(bob, "hi alice");
  const bobSaw = await waitForLines(bob, 2, "bob");
  const aliceSaw = await waitForLines(alice, 2, "alice");
  await confirmed(alice);
  await confirmed(bob);
  await sleep(300); // nothing more is coming: no line shown twice
  assert.deepEqual((await lines(alice)).map((l) => `${l.nick}: ${l.text}`).sort(), ["alice: hello bob", "bob: hi alice"]);
  assert.deepEqual((await lines(bob)).map((l) => `${l.nick}: ${l.text}`).sort(), ["alice: hello bob", "bob: hi alice"]);
  assert.ok([...aliceSaw, ...bobSaw].every((l) => !l.missed), "nothing was missed while both were here");

  // Typing is shown to the other one (a volatile emit).
  await alice.fill("[data-testid=message-input]", "typing something");
  await waitForText(bob, "#typing", "alice is typing…");
  await alice.fill("[data-testid=message-input]", "");
  await shot(alice, "1-alice-chatting");
  await shot(bob, "1-bob-chatting");

  // Bob's page closes; Alice sends three lines while he is away.
  await bob.close();
  await waitForText(alice, "[data-testid=messages] [data-testid=notice]", "bob left");
  const away = ["are you there?", "the broker restarts soon", "see you later"];
  for (const text of away) await say(alice, text);
  await confirmed(alice);

  // Carol's page is loaded, but she has not picked a nickname yet.
  const carolContext = await browser.newContext({ viewport: { width: 1000, height: 640 } });
  const carol = await loadChat(carolContext, broker.base, "carol", errors);

  // The broker dies (SIGKILL) and comes back on the same data directory and ports.
  await broker.kill();
  await waitForState(alice, "reconnecting");
  await shot(alice, "2-alice-reconnecting");
  // Carol picks hers while the broker is down: the SDK keeps trying the
  // first connection (the page shows its attempts) and gets in when it is back.
  await carol.fill("[data-testid=nickname]", "carol");
  await carol.press("[data-testid=nickname]", "Enter");
  await waitForText(carol, "[data-testid=connection-state]", "reconnecting… (attempt");
  await broker.start();
  await waitForState(alice, "connected");
  await waitForState(carol, "connected");
  await carol.waitForSelector("#room-list li.joined button.open:not(:has(.hint))", { timeout: WAIT_MS });

  // Bob comes back: a new page, the same nickname (remembered by the page).
  const bobAgain = await openChat(bobContext, broker.base, "bob", errors);
  const missed = await waitForLines(bobAgain, 3, "bob, back");
  await sleep(1000); // nothing more is coming: no duplicate
  const shown = await lines(bobAgain);
  assert.equal(shown.length, 3, `exactly the three missed lines: ${JSON.stringify(shown)}`);
  assert.deepEqual(shown, missed);
  assert.deepEqual(
    shown.map((l) => l.text),
    away,
  );
  assert.ok(shown.every((l) => l.nick === "alice" && l.missed), `all from alice, all marked missed: ${JSON.stringify(shown)}`);
  const seqs = shown.map((l) => Number(l.seq));
  assert.ok(
    seqs.every((s, i) => Number.isSafeInteger(s) && s > 0 && (i === 0 || s > (seqs[i - 1] ?? 0))),
    `seqs strictly increase: ${seqs.join(", ")}`,
  );
  // They are the seqs Alice's page got for them.
  const aliceSeqs = (await lines(alice)).filter((l) => away.includes(l.text)).map((l) => Number(l.seq));
  assert.deepEqual(seqs, aliceSeqs);

  // A line sent now is live, not missed.
  await say(alice, "welcome back");
  const now = await waitForLines(bobAgain, 4, "bob, live");
  assert.equal(now.length, 4);
  assert.deepEqual(now[3] && { nick: now[3].nick, text: now[3].text, missed: now[3].missed }, { nick: "alice", text: "welcome back", missed: false });
  assert.ok(Number(now[3]?.seq) > (seqs[2] ?? 0));
  // Carol, who joined after the restart, gets it live too (and nothing from before she joined).
  const carolSaw = await waitForLines(carol, 1, "carol, live");
  assert.deepEqual(
    carolSaw.map((l) => ({ nick: l.nick, text: l.text, missed: l.missed })),
    [{ nick: "alice", text: "welcome back", missed: false }],
  );

  await shot(alice, "alice");
  await shot(bobAgain, "bob");
  assert.deepEqual(errors, [], "no page errors, no console errors (CSP included)");
  await aliceContext.close();
  await bobContext.close();
  await carolContext.close();
}
