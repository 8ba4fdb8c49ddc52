#!/usr/bin/env bash
# Installs everything ferry needs to build, test and run its demo on Debian 12.
# Idempotent: skips apt entirely when every package is already installed.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libuv1-dev libpq-dev libmariadb-dev libcurl4-openssl-dev libjansson-dev
  libssl-dev libxml2-dev libmicrohttpd-dev
  # servers the tests and the demo start
  postgresql-15 postgresql-client-15 mariadb-server mariadb-client
  # test clients and tools
  python3 python3-pytest python3-psycopg2 python3-psycopg python3-pymysql python3-mysqldb python3-cryptography python3-botocore sysbench
  openssl procps iproute2 ca-certificates
  # deployment checks (tests/deploy): manifests are YAML; Node.js runs the offline Kubernetes schema check
  python3-yaml nodejs
  # promtool (tests/integration/test_signals.py: `promtool check metrics` on /metrics);
  # Debian ships it only inside the server package (about 100 MB installed)
  prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
# tests/deploy installs its pinned schema packages with npm: Debian ships npm
# apart from nodejs (NodeSource's nodejs includes it).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's server packages start a system-wide instance on install; the
# harness runs its own instances in temp dirs, so keep the system ones off.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
