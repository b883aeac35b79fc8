// Builds the web chat (examples/chat) into the files the broker serves:
// index.html, chat.js, chat.css. esbuild, minified, no source maps, so the
// output depends only on the sources and the locked esbuild version.
//
//   node scripts/build-chat.mjs            writes ../../src/web (embedded in roomqd)
//   node scripts/build-chat.mjs DIR        writes DIR
//   node scripts/build-chat.mjs --check    builds into a temporary directory and
//                                          fails unless ../../src/web has the same bytes
import { build } from "esbuild";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(pkg, "examples/chat");
const web = resolve(pkg, "../../src/web");
export const FILES = ["index.html", "chat.js", "chat.css"];

export async function buildChat(outDir) {
  mkdirSync(outDir, { recursive: true });
  await build({
    absWorkingDir: pkg,
    entryPoints: [
      { in: join(src, "main.ts"), out: "chat" },
      { in: join(src, "chat.css"), out: "chat" },
    ],
    outdir: outDir,
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: ["es2022"],
    legalComments: "none",
    charset: "utf8",
    sourcemap: false,
    logLevel: "warning",
  });
  copyFileSync(join(src, "index.html"), join(outDir, "index.html"));
}

const arg = process.argv[2];
if (arg === "--check") {
  const tmp = mkdtempSync(join(tmpdir(), "roomq-chat-"));
  try {
    await buildChat(tmp);
    const stale = FILES.filter((f) => !existsSync(join(web, f)) || !readFileSync(join(tmp, f)).equals(readFileSync(join(web, f))));
    if (stale.length > 0) {
      console.error(`src/web is not the build of examples/chat: ${stale.join(", ")} differ; run npm run build:chat and commit`);
      process.exitCode = 1;
    } else {
      console.log("src/web is the current build of examples/chat");
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else {
  const out = arg ? resolve(arg) : web;
  await buildChat(out);
  console.log(`chat built into ${out}: ${FILES.map((f) => `${f} ${readFileSync(join(out, f)).length} B`).join(", ")}`);
}
