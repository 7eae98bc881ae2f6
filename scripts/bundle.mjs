#!/usr/bin/env node
// Bundles the CLI's own modules into dist/bin/ (run by `npm run build`, after tsc).
//
// Why: a no-op `valley run` spent ~70 ms of its ~0.5 s loading ~35 ES modules
// one by one (test/bench/engine.mjs); a bundle loads them in a few files.
// Split at dynamic imports, so a command still loads only what it uses.
//
// What stays out of the bundle, loaded from dist/ as before:
// - packages (node_modules): resolved by Node as usual;
// - every module a stage kind can reach. Kinds are loaded at run time from
//   dist/stages/<kind>/index.js, and share modules with the engine
//   (engine/stage-api.js, engine/process.js, …). A second, bundled copy of
//   such a module would hold its own classes and state: `instanceof
//   BadStageInput` in the engine would miss the class a stage throws;
// - modules that locate files beside themselves, and what they reach.
import { build } from "esbuild";
import { readdirSync, readFileSync, existsSync, rmSync, chmodSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const DIST = join(ROOT, "dist");
const OUT = join(DIST, "bin");

// Modules that find files beside themselves (import.meta.url: a worker, a
// child script) must stay where they were compiled. These use it in ways a
// bundle keeps working: walking up to the package root (it is above dist/bin
// too), or createRequire for absolute paths and packages.
const LOCATION_FREE = ["engine/root.js", "engine/kinds.js", "engine/pipeline/source.js"];
const located = [];
const walk = (dir) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (!["bin", "test", ".schema-cache"].includes(e.name)) walk(p);
    } else if (
      p.endsWith(".js") &&
      !LOCATION_FREE.includes(relative(DIST, p).split(sep).join("/")) &&
      readFileSync(p, "utf8").includes("import.meta.url")
    )
      located.push(p);
  }
};
walk(DIST);
// Those and the stage kinds stay out, with every module they reach (from
// esbuild's own resolution of them): one copy of each module, shared.
const kinds = readdirSync(join(DIST, "stages"))
  .map((k) => join(DIST, "stages", k, "index.js"))
  .filter((f) => existsSync(f));
const reach = await build({
  entryPoints: [...kinds, ...located],
  bundle: true,
  platform: "node",
  format: "esm",
  packages: "external",
  write: false,
  metafile: true,
  outdir: join(DIST, ".bundle-probe"),
  logLevel: "silent",
});
const shared = new Set(Object.keys(reach.metafile.inputs).map((p) => resolve(ROOT, p)));

rmSync(OUT, { recursive: true, force: true });
await build({
  entryPoints: { valley: join(DIST, "engine", "cli.js") },
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  // Chunks beside the entry, so one relative path to dist/ serves every output file.
  outdir: OUT,
  chunkNames: "[name]-[hash]",
  logLevel: "warning",
  plugins: [
    {
      name: "shared-with-kinds",
      setup(b) {
        b.onResolve({ filter: /^\.\.?\// }, (args) => {
          const abs = resolve(args.resolveDir, args.path);
          if (!shared.has(abs)) return undefined;
          return { path: relative(OUT, abs).split(sep).join("/"), external: true };
        });
      },
    },
  ],
});
chmodSync(join(OUT, "valley.js"), 0o755);

// The build id: a digest of everything valley's keys are computed with (the
// compiled modules, the schemas and their defaults). The run memo
// (engine/run-memo.ts) trusts a remembered run only under the same id, so a
// new build never serves keys an old one computed.
const { createHash } = await import("node:crypto");
const id = createHash("sha256");
const hashTree = (dir, skip = []) => {
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  )) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (!skip.includes(e.name)) hashTree(p, skip);
    } else if (/\.(js|json|cjs|mjs)$/.test(e.name)) {
      id.update(relative(ROOT, p)).update("\0").update(readFileSync(p)).update("\0");
    }
  }
};
hashTree(DIST, ["test", ".schema-cache", ".bundle-probe"]);
hashTree(join(ROOT, "schemas"));
for (const k of readdirSync(join(ROOT, "stages")).sort()) {
  const f = join(ROOT, "stages", k, "schema.json");
  if (existsSync(f)) id.update(relative(ROOT, f)).update("\0").update(readFileSync(f)).update("\0");
}
id.update(readFileSync(join(ROOT, "package.json")));
writeFileSync(join(OUT, "build-id"), id.digest("hex") + "\n");
