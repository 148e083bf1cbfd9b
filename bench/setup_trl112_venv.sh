#!/usr/bin/env bash
# Creates .venv-trl112: a benchmark-only virtualenv with TRL 1.12.0, the last release that has PPO
# (trl.experimental.ppo), next to the same torch as .venv. Only bench/ppo_vs_trl.py runs under it;
# the product (training/) never imports trl. Ignored by git through the `.venv-*/` pattern.
#   bench/setup_trl112_venv.sh            # idempotent
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRL112_VENV:-$ROOT/.venv-trl112}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# torch first, from the local CPU wheel; every later install keeps the pin (else ~3 GB of CUDA wheels).
"${PIP[@]}" "torch==2.13.0" -c constraints.txt
# The product's training dependencies with the same pins (transformers, peft, accelerate, datasets, ...).
"${PIP[@]}" -r requirements.txt -c constraints.txt
"${PIP[@]}" "trl==1.12.0" -c constraints.txt
# bench scripts import `training` from the checkout.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" > "$site/rlhf_checkout.pth"
"$VENV/bin/python" -c 'import torch, transformers, trl; from trl.experimental.ppo import PPOConfig, PPOTrainer; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'
