#!/usr/bin/env bash
# The test command of the README: set up .venv if needed, then lint, type-check and test.
# Extra arguments go to pytest, e.g. `./dev/test.sh -k emulator -x`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/setup-env.sh
source "$repo/dev/setup-env.sh"
cd "$repo"
ruff check autolabel tests bench models
ruff format --check autolabel tests bench models
mypy
exec python -m pytest "$@"
