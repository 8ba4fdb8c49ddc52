#!/usr/bin/env bash
# Installs the pinned npm packages that tests/deploy uses to validate the
# Kubernetes manifests offline (k8s-schema/package-lock.json: exact versions
# and integrity hashes) into tests/deploy/k8s-schema/node_modules (gitignored).
# Needs the npm registry once; afterwards the tests run without network.
# Idempotent: does nothing when the installed tree matches the lockfile.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/k8s-schema"
stamp="$dir/node_modules/.ferry-lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install-schemas: up to date ($dir/node_modules)"
  exit 0
fi
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "install-schemas: $tool not found (Node.js >= 20 with npm is needed)" >&2; exit 1; }
done
echo "install-schemas: npm ci in $dir"
# --ignore-scripts: nothing from the registry runs at install time.
npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
