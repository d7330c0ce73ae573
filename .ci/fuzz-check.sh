#!/usr/bin/env bash
# Checks that the fuzz targets in fuzz/ compile. Does not run them.
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets stable Rust use them.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
# One job: CI machines are small and other builds may be running.
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" RUSTC_BOOTSTRAP=1 cargo fuzz build -O
echo "fuzz targets build"
