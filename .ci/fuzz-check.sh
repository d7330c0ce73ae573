#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and replays every seed, every saved
# regression and the minimised corpus of the last campaign (FUZZING.md)
# once per target (cheap: no fuzzing, each input run once).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets stable Rust use them.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
export RUSTC_BOOTSTRAP=1
# Sanitizer builds are large: show the room there is, so a failure to link
# can be told apart from a full disk or memory.
df -h . | tail -1
free -m | sed -n 2p
log=/tmp/fuzz-build.log
# One job by default: CI machines are small and other builds may be running.
if ! CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo fuzz build -O >"$log" 2>&1; then
    # The linker's own words come after its (very long) command line: print
    # everything but progress lines, each cut short, then retry with one job.
    grep -v '^ *Compiling ' "$log" | cut -c1-400 | tail -60
    df -h . | tail -1
    free -m | sed -n 2p
    echo "fuzz build failed; retrying with one job" >&2
    if ! CARGO_BUILD_JOBS=1 cargo fuzz build -O >"$log" 2>&1; then
        grep -v '^ *Compiling ' "$log" | cut -c1-400 | tail -60
        exit 1
    fi
fi
echo "fuzz targets build"

for target in $(cargo fuzz list); do
    for dir in "seeds/$target" "regressions/$target" "corpus-min/$target"; do
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
echo "seeds, regressions and minimised corpora replayed"
