#!/usr/bin/env bash
# The main job on the bundled example: train -> evaluate -> MD -> analyse -> relax.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
OUT=runs/example
mkdir -p "$OUT"
mlff train examples/ethanol_gfn2_500K_train300.extxyz --valid examples/ethanol_gfn2_500K_valid100.extxyz \
    --out "$OUT/train" --time-limit 2
mlff eval "$OUT/train/model.pt" examples/ethanol_gfn2_500K_valid100.extxyz --parity "$OUT/parity.png"
echo "example done: outputs in $OUT"
