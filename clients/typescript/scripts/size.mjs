// Measures the browser bundle of the SDK with its protobuf runtime:
// esbuild, ES module, minified, for browsers; then gzip -9. Fails over 40 KB.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const LIMIT = 40 * 1024;
const result = await build({
  entryPoints: ["src/index.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  write: false,
  metafile: true,
  logLevel: "warning",
});
const bytes = result.outputFiles[0].contents;
const gz = gzipSync(bytes, { level: 9 }).length;
console.log(`browser bundle: ${bytes.length} bytes minified, ${gz} bytes gzipped (${(gz / 1024).toFixed(1)} KiB; limit ${LIMIT / 1024} KiB)`);
if (gz > LIMIT) {
  console.error("the bundle is over the limit");
  process.exit(1);
}
