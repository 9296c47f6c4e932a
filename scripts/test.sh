#!/usr/bin/env bash
# Install into ./.venv if needed, then run the linter and the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
ruff check .
ruff format --check .
python -m pytest -q "$@"
