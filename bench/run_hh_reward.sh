#!/usr/bin/env bash
# Real-data reward model on HH-RLHF: offline base → SFT → RM with the CLI (ours) and TRL's RewardTrainer on
# the same SFT base, data, token budget and seed; then held-out accuracy per subset next to the length
# heuristic. Also trains the OpenAssistant k-way reward model. CPU-sized: about 15 minutes on 2 cores.
#   bench/setup_bench_venv.sh && bench/run_hh_reward.sh [WORK_DIR]
# STRIDE=n keeps every n-th training pair for the RM (default 4: ~1,050 pairs; 1: all 4,188).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
W="${1:-var/training}"
S="$ROOT/../shared/data"
PY=.venv/bin/python
BENCH=.venv-bench/bin/python
mkdir -p "$W"

# 1. Contract files, split by record hash (10% held out).
$PY -m training convert hh-rlhf "$S/hh-rlhf/harmless-base/test.jsonl.gz" "$S/hh-rlhf/helpful-base/test.jsonl.gz" \
  --out "$W/hh" --eval-fraction 0.1
$BENCH bench/hh_reward.py prepare --hh "$W/hh" --stride "${STRIDE:-4}"

# 2. SFT from the shipped offline base on the chosen responses of the training side.
$PY -m training sft --base training/assets/tiny-base --data "$W/hh/sft.train.jsonl" \
  --eval-data "$W/hh/sft.heldout.jsonl" --out "$W/hh-sft" --max-steps 150 --batch-size 8 --max-length 256 \
  --learning-rate 3e-4 --warmup-steps 10 --seed 0 --log-every 10

# 3. Reward model with the CLI: one epoch over the budget file, k-way loss (k = 2 here). The schedule and
#    Adam betas are set to TRL's defaults (cosine to 0, betas 0.9/0.999) so that only the trainer differs.
$PY -m training rm --base "$W/hh-sft" --data "$W/hh/rankings.train.budget.jsonl" \
  --eval-data "$W/hh/rankings.heldout.jsonl" --out "$W/hh-rm" --epochs 1 --batch-size 4 --max-length 256 \
  --learning-rate 1e-4 --warmup-steps 10 --min-lr-ratio 0 --adam-betas '[0.9, 0.999]' --seed 0 --log-every 10

# 4. TRL 1.16 RewardTrainer: same SFT base, same pairs and token sequences, same epochs/batch/lr/seed.
$BENCH bench/hh_reward.py trl --base "$W/hh-sft" --hh "$W/hh" --out "$W/hh-rm-trl" --batch-size 4 \
  --learning-rate 1e-4 --warmup-steps 10 --seed 0 --max-length 256

# 5. Held-out pairwise accuracy per subset.
$BENCH bench/hh_reward.py compare --hh "$W/hh" --ours "$W/hh-rm" --trl "$W/hh-rm-trl" --out "$W/hh-compare.json"

# 6. OpenAssistant trees through the k-way path (k up to 9).
$PY -m training convert oasst "$S/open-assistant/en_100_tree.jsonl" --out "$W/oa" --eval-fraction 0.1
$PY -m training rm --base "$W/hh-sft" --data "$W/oa/rankings.train.jsonl" --eval-data "$W/oa/rankings.heldout.jsonl" \
  --demonstrations "$W/oa/sft.train.jsonl" --out "$W/oa-rm" --epochs 1 --batch-size 4 --max-length 256 \
  --learning-rate 1e-4 --warmup-steps 5 --seed 0 --log-every 10
