#!/usr/bin/env bash
# Installs dependencies, builds ferry and runs the demo (see scripts/demo.py).
#   scripts/demo.sh           # stays up until Ctrl-C
#   scripts/demo.sh --once    # runs the queries and exits 0 if they all worked
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j2
exec /usr/bin/python3 scripts/demo.py "$@"
