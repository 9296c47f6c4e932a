#!/usr/bin/env bash
# The main job on the bundled example (three to five minutes on two CPU cores; training is two):
# train -> evaluate -> NVT MD with covariance checks -> analyse -> relax, all under runs/example/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
OUT=runs/example
DATA=examples/ethanol_gfn2_500K_train300.extxyz
VALID=examples/ethanol_gfn2_500K_valid100.extxyz
mkdir -p "$OUT"

echo "== train (2 minutes) =="
mlff train "$DATA" --valid "$VALID" --out "$OUT/train" --time-limit 2 --progress lines
echo "== evaluate =="
mlff eval "$OUT/train/model.pt" "$VALID" --parity "$OUT/parity_valid.png"
echo "== NVT molecular dynamics at 500 K, 0.5 fs, with a covariance check every 200 steps =="
mlff md run "$OUT/train/model.pt" "$VALID" --index 0 --ensemble nvt --temperature 500 \
    --timestep 0.5 --steps 2000 --interval 10 --covariance-every 200 --seed 1 \
    --traj "$OUT/md.extxyz" --log "$OUT/md.csv" --no-progress
echo "== analyse the trajectory =="
mlff md analyze "$OUT/md.extxyz" --log "$OUT/md.csv" --out "$OUT/md_analysis"
echo "== relax the last MD frame =="
mlff relax "$OUT/train/model.pt" "$OUT/md.extxyz" --index -1 --fmax 0.01 --optimizer bfgs \
    --out "$OUT/relaxed.extxyz"
echo "example done: models, plots and trajectories are in $OUT/"
