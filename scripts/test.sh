#!/usr/bin/env bash
# The whole test suite, as CI runs it: build preparation, reproducibility of the committed Cairo
# programs, formatting, lints, then every test of the workspace (release mode: the tests prove).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/starkscale/target}

scripts/patch-deps.sh
scripts/compile-cairo.sh --check
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
