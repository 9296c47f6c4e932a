#!/usr/bin/env bash
# Wheel smoke test (CI runs it after scripts/test.sh): build the wheel, install it (not editable)
# into a fresh virtual environment, and from a folder outside the source tree run
# mlff --help and a ten-second train -> eval -> md run -> relax on the bundled ethanol example.
# Everything happens in one temporary folder, removed at the end whether the run passes or not.
#
#   bash scripts/wheel_smoke.sh          # PYTHON=python3.11 to choose the interpreter
#
# torch comes first and pinned (MLFF_SMOKE_TORCH, default torch==2.13.0: the CPU build served from
# local disk on our machines), so installing the wheel never makes pip fetch another torch.
# --no-compile: byte-compiling all of torch and the dependencies doubled the install time; the
# few modules mlff uses are compiled on first import.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${MLFF_SMOKE_TORCH:-torch==2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mlff-wheel-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { echo "== wheel smoke [$((SECONDS - START)) s]: $*"; }

step "copy the working tree (files git tracks or would track) to $WORK/src"
# A copy, not the checkout itself: setuptools reuses build/lib, where a stale file could hide
# a module that the configuration leaves out.
mkdir "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$REPO/$f" ] && printf '%s\0' "$f"; done |
    tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/src" -xf -

step "fresh virtual environment, $TORCH first"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
echo "$TORCH" >"$WORK/torch-pin.txt"
"$VPY" -m pip install -q --no-compile "$TORCH"

step "build the wheel"
"$VPY" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/mlff-*.whl)"
# every package folder of the tree (a folder with __init__.py) must be in the wheel
"$VPY" - "$WHEEL" "$WORK/src" <<'EOF'
import sys, zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

wheel, src = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
roots = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
missing = []
for package, folder in roots.items():
    for init in sorted((src / folder).rglob("__init__.py")):
        relative = init.relative_to(src / folder).parts
        installed = "/".join((*package.split("."), *relative))
        if installed not in names:
            missing.append(installed)
if missing:
    sys.exit(f"wheel smoke: {Path(wheel).name} lacks {', '.join(missing)}")
print(f"{Path(wheel).name}: {len(names)} files, every package folder present")
EOF

step "install the wheel (not editable) and its dependencies"
"$VPY" -m pip install -q --no-compile -c "$WORK/torch-pin.txt" "$WHEEL"

step "run from $WORK/run, outside the source tree"
mkdir "$WORK/run"
cp "$REPO/examples/ethanol_gfn2_500K_train300.extxyz" "$WORK/run/train.extxyz"
cp "$REPO/examples/ethanol_gfn2_500K_valid100.extxyz" "$WORK/run/valid.extxyz"
cd "$WORK/run"
export PATH="$WORK/venv/bin:$PATH"
unset PYTHONPATH
python - "$REPO" <<'EOF'
import sys
from pathlib import Path

import mlff
import mlff.potentials
import mlff.training
import mlff.workflows

repo = Path(sys.argv[1]).resolve()
for module in (mlff, mlff.potentials, mlff.training, mlff.workflows):
    path = Path(module.__file__).resolve()
    if path.is_relative_to(repo):
        sys.exit(f"wheel smoke: {module.__name__} imported from the source tree ({path})")
print(f"mlff {mlff.__version__} from {Path(mlff.__file__).parent}")
EOF
mlff --help >/dev/null
mlff --version

step "the fused CPU kernels build from the wheel's sources (where there is a C++ compiler)"
MLFF_KERNEL_CACHE="$WORK/kernels" python - <<'EOF'
import shutil

import torch
from mlff.potentials import kernels

if shutil.which("g++") is None:
    print("no g++: the fused kernels are skipped, the reference path runs")
elif not kernels.available(torch.float32, torch.device("cpu")):
    raise SystemExit("wheel smoke: the fused kernels did not build from the installed wheel")
else:
    print(f"fused kernels built from {', '.join(p.name for p in kernels.SOURCES)}")
EOF

step "mlff train (0.15 minutes)"
mlff train train.extxyz --valid valid.extxyz --out train --size small --time-limit 0.15 \
    --progress lines
test -s train/model.pt

step "mlff eval"
mlff eval train/model.pt valid.extxyz --json >eval.json
python -c "import json; d = json.load(open('eval.json')); print(d)"

step "mlff md run (20 NVT steps)"
mlff md run train/model.pt valid.extxyz --index 0 --ensemble nvt --temperature 300 \
    --timestep 0.5 --steps 20 --interval 5 --covariance-every 10 --seed 1 \
    --traj md.extxyz --log md.csv --no-progress
test -s md.extxyz && test -s md.csv

step "mlff relax (at most 20 steps)"
mlff relax train/model.pt md.extxyz --index -1 --max-steps 20 --keep-unconverged \
    --out relaxed.extxyz
test -s relaxed.extxyz

step "passed in $((SECONDS - START)) s"
