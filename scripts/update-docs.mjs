// Regenerates what is derived from the schemas: schemas/valley.schema.json
// (for editors) and the YAML reference in README.md. `npm run docs`; a test
// fails when either is stale.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const cli = (...args) =>
  execFileSync(process.execPath, ["dist/bin/valley.js", ...args], { encoding: "utf8" });
writeFileSync("schemas/valley.schema.json", cli("schema"));
const readme = readFileSync("README.md", "utf8");
const start = "<!-- reference:start -->\n";
const end = "<!-- reference:end -->";
const a = readme.indexOf(start);
const b = readme.indexOf(end);
if (a < 0 || b < a) throw new Error("README.md lacks the reference markers");
writeFileSync(
  "README.md",
  readme.slice(0, a + start.length) + cli("schema", "--markdown") + readme.slice(b),
);
