// Builds the web app into one folder (default web/dist; `node web/build.mjs <outdir>`): index.html, and
// under assets/ app.js and app.css bundled by esbuild from web/src and clients/js/src. Type-checks first
// (tsc) unless --no-typecheck. Deterministic: the same inputs give the same bytes.

import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const out = resolve(args.find((a) => !a.startsWith("--")) ?? join(here, "dist"));

if (!args.includes("--no-typecheck")) {
  const tsc = join(here, "..", "node_modules", "typescript", "bin", "tsc");
  try {
    execFileSync(process.execPath, [tsc, "-p", join(here, "tsconfig.json")], { stdio: "inherit" });
  } catch {
    console.error("web: type errors (above)");
    process.exit(1);
  }
}

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
await esbuild.build({
  entryPoints: { app: join(here, "src", "main.ts") },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: false,
  legalComments: "none",
  outdir: join(out, "assets"),
  alias: { "@confab/client": join(here, "..", "clients", "js", "src", "index.ts") },
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
console.log(`web app built into ${out}`);
