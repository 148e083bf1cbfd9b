#!/usr/bin/env bash
# Creates .venv-bench: a benchmark-only virtualenv holding TRL next to the same torch as .venv.
# The product (training/) never imports trl; only bench/*_vs_trl scripts run under this venv.
#   bench/setup_bench_venv.sh            # idempotent; re-run after changing the pins below
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# torch first, from the local CPU wheel (pip's find-links), so nothing pulls the CUDA wheels.
"${PIP[@]}" "torch==2.13.0" -c constraints.txt
# The product's own dependencies (transformers, peft, accelerate, ...) with the same pins, then TRL.
"${PIP[@]}" -r requirements.txt -c constraints.txt
"${PIP[@]}" "trl==1.16.*" -c constraints.txt
# bench scripts import `training` from the checkout.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" > "$site/rlhf_checkout.pth"
"$VENV/bin/python" -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)'
