#!/usr/bin/env bash
# Runs every test ferry has: installs dependencies, builds with gcc, runs the
# unit tests and the integration tests against real servers, then does the
# same with a clang ASan+UBSan build. Exit status is non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh

step() { printf '\n==== %s ====\n' "$*"; }

step "build (gcc, -Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc >/dev/null
cmake --build build -j"$JOBS"

step "build (clang, ASan+UBSan, -Werror)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DFERRY_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$JOBS"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98

step "unit tests (gcc)"
ctest --test-dir build --output-on-failure
step "unit tests (ASan+UBSan)"
ctest --test-dir build-asan --output-on-failure

step "fuzz: every fuzz_* target for ${FUZZ_SECONDS:=15} s (clang libFuzzer, ASan+UBSan)"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DFERRY_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$JOBS"
fuzz_work=$(mktemp -d)
trap 'rm -rf "$fuzz_work"' EXIT
# Each target prints its coverage (cov: edges, ft: features) when done; the
# functions listed in tests/fuzz/must_reach/<name> must be among those it
# covered (so a target linked against uninstrumented code fails here).
for target in $(find build-fuzz -type f -perm -u+x -name 'fuzz_*' | sort); do
  name=$(basename "$target"); name=${name#fuzz_}
  mkdir -p "$fuzz_work/$name"
  "$target" -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 -print_coverage=1 \
    "$fuzz_work/$name" "tests/fuzz/corpus/$name" > "$fuzz_work/$name.log" 2>&1 \
    || { tail -n 40 "$fuzz_work/$name.log"; exit 1; }
  echo "fuzz_$name: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$fuzz_work/$name.log" | tail -n 1)"
  if [ -f "tests/fuzz/must_reach/$name" ]; then
    while read -r fn; do
      [ -z "$fn" ] || [ "${fn#\#}" != "$fn" ] && continue
      grep -qE "^COVERED_FUNC: .* $fn " "$fuzz_work/$name.log" \
        || { echo "fuzz_$name never reached $fn"; exit 1; }
    done < "tests/fuzz/must_reach/$name"
  fi
done

step "deployment: Dockerfile, Kubernetes manifests, IAM policy (tests/deploy)"
./tests/deploy/install-schemas.sh   # pinned npm schema packages, once (npm registry)
FERRY_BIN="$PWD/build/ferry" /usr/bin/python3 -m pytest tests/deploy -q -p no:cacheprovider

step "integration tests (gcc build)"
FERRY_BIN="$PWD/build/ferry" /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider "$@"
step "integration tests (ASan+UBSan build)"
FERRY_BIN="$PWD/build-asan/ferry" FERRY_SANITIZED=1 /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider "$@"

step "bench smoke"
# every bench scenario against every target with tiny durations (bench/run
# installs its tools from apt and builds ferry Release in build-bench/); it
# checks that each scenario ran and produced well-formed results, never speed
bench/run --smoke

step "all tests passed"
