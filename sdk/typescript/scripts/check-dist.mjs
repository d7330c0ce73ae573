#!/usr/bin/env node
// Checks that the committed build (dist/) is what `npm run build` makes of
// src/: the package is installed from a clone without building, so dist/
// must follow every change of src/.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
// A sibling of dist/, so that the source maps' relative paths are the same.
const fresh = join(pkg, ".dist-check");
rmSync(fresh, { recursive: true, force: true });

function files(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

try {
  const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.json"), "--outDir", fresh], { stdio: "inherit" });
  const want = files(fresh);
  const have = files(join(pkg, "dist"));
  const differ = [
    ...want.filter((f) => !have.includes(f)).map((f) => `missing: dist/${f}`),
    ...have.filter((f) => !want.includes(f)).map((f) => `extra: dist/${f}`),
    ...want
      .filter((f) => have.includes(f))
      .filter((f) => !readFileSync(join(fresh, f)).equals(readFileSync(join(pkg, "dist", f))))
      .map((f) => `differs: dist/${f}`),
  ];
  if (differ.length) {
    console.error(`check:dist: dist/ is not the build of src/:\n  ${differ.join("\n  ")}\nrun \`npm run build\` in sdk/typescript and commit dist/`);
    process.exitCode = 1;
  } else {
    console.log(`check:dist: dist/ is the build of src/ (${want.length} files)`);
  }
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
