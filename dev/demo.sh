#!/usr/bin/env bash
# Quick start, command 1: set up .venv if needed, then run the whole job on the embedded
# default (a local RedBrick emulator seeded with sample CT studies, the default model,
# drafts) and print where the results are. Extra arguments go to `autolabel demo`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=dev/setup-env.sh
source "$repo/dev/setup-env.sh"
cd "$repo"
exec autolabel demo "$@"
