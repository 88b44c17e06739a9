#!/usr/bin/env bash
# Makes the stwo stack build on stable Rust 1.95 without carrying upstream source.
#
# stwo-cairo-common 1.3.0 calls `Mask::to_int()`, which std renamed to `to_simd()`. This takes the
# crate from cargo's own download, applies that one rename into `.patched/` (git-ignored), and the
# root Cargo.toml's `[patch.crates-io]` points there. Idempotent: a second run only checks a stamp.
set -euo pipefail

crate=stwo-cairo-common
version=1.3.0
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.patched/$crate"
stamp="$dest/.starkscale-patched-$version"

[ -f "$stamp" ] && exit 0

cargo_home=${CARGO_HOME:-$HOME/.cargo}
find_src() {
  local dir
  for dir in "$cargo_home"/registry/src/*/"$crate-$version"; do
    [ -d "$dir" ] && { echo "$dir"; return 0; }
  done
  return 0
}

src=$(find_src)
if [ -z "$src" ]; then
  # Cargo cannot resolve the workspace while the patch path is missing, so let a throw-away
  # manifest make cargo download (and checksum) the crate.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/src"
  : > "$tmp/src/lib.rs"
  cat > "$tmp/Cargo.toml" <<TOML
[package]
name = "starkscale-fetch-$crate"
version = "0.0.0"
edition = "2021"
[dependencies]
$crate = "=$version"
TOML
  (cd "$tmp" && cargo fetch --quiet)
  src=$(find_src)
fi
[ -n "$src" ] || { echo "patch-deps: $crate $version not found after cargo fetch" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -R "$src" "$dest"
file="$dest/src/prover_types/simd.rs"
grep -q '\.to_int()' "$file" || { echo "patch-deps: expected call not found in $file" >&2; exit 1; }
sed -i 's/\.to_int()/.to_simd()/' "$file"
# Cargo refuses a path dependency that still carries the registry's checksum bookkeeping.
rm -f "$dest/.cargo-ok" "$dest/.cargo_vcs_info.json"
touch "$stamp"
