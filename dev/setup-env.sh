#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install autolabel into it.
# Sourced by dev/demo.sh and dev/test.sh; safe to run again (it only installs what is missing).
#   AUTOLABEL_VENV   where the environment lives (default: .venv in the repository)
#   AUTOLABEL_EXTRAS extras to install (default: test,dev,deepbet,dicom-codecs,ray,monai,nnunet,
#                    totalsegmentator)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AUTOLABEL_VENV:-$repo/.venv}"
extras="${AUTOLABEL_EXTRAS:-test,dev,deepbet,dicom-codecs,ray,monai,nnunet,totalsegmentator}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "autolabel: creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first, unless some build (e.g. the user's CUDA one) is already there, so that resolving
# the project does not pull a multi-GB CUDA wheel. AUTOLABEL_TORCH picks another requirement.
if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  echo "autolabel: installing a CPU build of torch" >&2
  "$vpy" -m pip install --quiet --disable-pip-version-check "${AUTOLABEL_TORCH:-torch==2.13.0}"
fi
stamp="$venv/.autolabel-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] || [ "${AUTOLABEL_REINSTALL:-0}" = 1 ]; then
  echo "autolabel: installing autolabel[$extras]" >&2
  # Hold the environment's torch as it is: without this, a dependency asking for the newest
  # torchvision (nnunetv2 -> timm) would make pip replace torch with another (CUDA) build.
  held="$venv/.autolabel-torch-constraint.txt"
  "$vpy" -c "import torch; print('torch==' + torch.__version__)" >"$held"
  "$vpy" -m pip install --quiet --disable-pip-version-check -c "$held" -e "$repo[$extras]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
