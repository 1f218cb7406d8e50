// The viewer page's copy of the SDK: dist/ bundled into one readable ES
// module at static/danmaku-client.js, which the server embeds and serves
// (`GET /danmaku-client.js`) with no npm step at run time. The check in
// test/bundle.test.mjs rebuilds it and compares, so the committed file
// cannot drift from the source.
//
// Usage: node scripts/bundle.mjs [OUT]   (default ../../static/danmaku-client.js)
import { build } from "esbuild";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const out = path.resolve(process.argv[2] || path.join(pkg, "../../static/danmaku-client.js"));

await build({
  entryPoints: [path.join(pkg, "dist/index.js")],
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: false,
  legalComments: "none",
  banner: {
    js: "// GENERATED from clients/js (npm run build): do not edit. The danmaku viewer SDK as one ES module.",
  },
  outfile: out,
  logLevel: "warning",
});
