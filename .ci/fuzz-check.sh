#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and replays every seed and every saved
# regression once per target (cheap: no fuzzing, each input run once).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets stable Rust use them.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
export RUSTC_BOOTSTRAP=1
# One job: CI machines are small and other builds may be running.
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo fuzz build -O
echo "fuzz targets build"

for target in $(cargo fuzz list); do
    for dir in "seeds/$target" "regressions/$target"; do
        if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
            echo "replaying $dir"
            cargo fuzz run -O "$target" "$dir" -- -runs=0 >/dev/null 2>"/tmp/fuzz-replay-$target.log" || {
                cat "/tmp/fuzz-replay-$target.log"
                echo "replay of $dir failed" >&2
                exit 1
            }
        fi
    done
done
echo "seeds and regressions replayed"
