#!/usr/bin/env bash
# Regenerates and recompiles the Cairo programs in cairo/programs/.
#
#   scripts/compile-cairo.sh          rewrite map{,_unbound}.{cairo,json}, reduce.json, root.json,
#                                     batch_pass.cairo, batch.json, batch_root.json, infer_root.json,
#                                     layer_pass.cairo, layer.json and the test fixtures
#   scripts/compile-cairo.sh --check  fail if either differs from the committed file
#
# cairo-lang 0.14.0.1 (PyPI) runs from a venv under ~/.cache/starkscale, created on first use.
# Compiling from the programs directory with --no_debug_info keeps the output byte-for-byte
# reproducible.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${STARKSCALE_CAIRO_VENV:-$HOME/.cache/starkscale/cairo-venv}
check=false
[ "${1:-}" = "--check" ] && check=true

if [ ! -x "$venv/bin/cairo-compile" ]; then
  echo "compile-cairo: installing cairo-lang 0.14.0.1 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cairo-lang==0.14.0.1
fi

cd "$root/cairo/programs"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 gen_map.py > "$out/map.cairo"
python3 gen_map.py --unbound > "$out/map_unbound.cairo"
python3 gen_batch_pass.py > "$out/batch_pass.cairo"
python3 gen_batch_pass.py --layer > "$out/layer_pass.cairo"
# Compile files named like the committed ones so nothing path-dependent differs.
for name in map map_unbound; do
  (cd "$out" && "$venv/bin/cairo-compile" --proof_mode --no_debug_info $name.cairo --output $name.json)
done
# The reduce programs are hand-written; they share starkscale_tree.cairo. The batch programs
# import the freshly generated batch_pass.cairo (from $out, first on the path).
for name in reduce root batch batch_root layer infer_root; do
  "$venv/bin/cairo-compile" --proof_mode --no_debug_info --cairo_path "$out:." $name.cairo --output "$out/$name.json"
done
fixtures="$root/cairo/tests/fixtures"
for name in other blake2s; do
  (cd "$fixtures" && "$venv/bin/cairo-compile" --proof_mode --no_debug_info $name.cairo --output "$out/$name.json")
done

if $check; then
  status=0
  for f in cairo/programs/map.cairo cairo/programs/map.json cairo/programs/map_unbound.cairo \
    cairo/programs/map_unbound.json cairo/programs/reduce.json cairo/programs/root.json \
    cairo/programs/batch_pass.cairo cairo/programs/batch.json cairo/programs/batch_root.json \
    cairo/programs/layer_pass.cairo cairo/programs/layer.json cairo/programs/infer_root.json \
    cairo/tests/fixtures/other.json cairo/tests/fixtures/blake2s.json; do
    if ! cmp -s "$out/$(basename "$f")" "$root/$f"; then
      echo "compile-cairo: $f is stale: run scripts/compile-cairo.sh" >&2
      status=1
    fi
  done
  [ $status = 0 ] && echo "compile-cairo: committed programs are reproducible"
  exit $status
fi
cp "$out"/map.cairo "$out"/map.json "$out"/map_unbound.cairo "$out"/map_unbound.json \
  "$out"/reduce.json "$out"/root.json "$out"/batch_pass.cairo "$out"/batch.json \
  "$out"/batch_root.json "$out"/layer_pass.cairo "$out"/layer.json "$out"/infer_root.json .
cp "$out/other.json" "$out/blake2s.json" "$fixtures/"
echo "compile-cairo: wrote cairo/programs/{map,map_unbound,reduce,root,batch,batch_root,layer,infer_root}.json, map{,_unbound}.cairo, {batch,layer}_pass.cairo and cairo/tests/fixtures/*.json"
