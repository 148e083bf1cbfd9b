#!/usr/bin/env bash
# Issue 5, end to end on CPU through the CLI: offline tiny base → SFT (HH-RLHF chosen responses) → reward
# model (HH-RLHF pairs) → PPO (training-side prompts) → held-out evaluation: mean RM score of the PPO
# policy vs the SFT policy on prompts no stage ever saw, and the PPO policy's KL to the SFT policy.
#   bench/ppo_end_to_end.sh [WORK_DIR]          # default var/ppo-e2e; results in WORK_DIR/eval.json
# Every stage uses SEED (default 0). Wall times per stage go to WORK_DIR/times.txt.
# CPU-sized: SFT 150 steps × 8 (max length 256), RM 120 steps × 8 pairs (max length 192), PPO 20 iterations ×
# 16 prompts (32 new tokens, prompts cut to 128 tokens, 2 PPO epochs of 2 minibatches), eval 468 held-out
# prompts × 1 sampling seed per policy. About 5 minutes on an idle 2-core machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
W="${1:-var/ppo-e2e}"
S="$ROOT/../shared/data"
PY=.venv/bin/python
SEED="${SEED:-0}"
mkdir -p "$W"
: > "$W/times.txt"
timed() {  # timed NAME command...: run it, append "NAME seconds" to times.txt
  local name=$1 start
  shift
  start=$(date +%s.%N)
  "$@"
  echo "$name $(echo "$(date +%s.%N) - $start" | bc)" >> "$W/times.txt"
}

# 1. Contract files split by record hash (10% held out), then PPO-prompt files: the unique prompts of
#    each side (held-out prompts are never seen by SFT, RM or PPO).
timed convert $PY -m training convert hh-rlhf "$S/hh-rlhf/harmless-base/test.jsonl.gz" \
  "$S/hh-rlhf/helpful-base/test.jsonl.gz" --out "$W/hh" --eval-fraction 0.1
timed prompts $PY bench/ppo_e2e.py prompts --hh "$W/hh" --out "$W/prompts"

# 2. SFT from the shipped offline base on the chosen responses of the training side.
timed sft $PY -m training sft --base training/assets/tiny-base --data "$W/hh/sft.train.jsonl" \
  --eval-data "$W/hh/sft.heldout.jsonl" --out "$W/sft" --max-steps 150 --batch-size 8 --max-length 256 \
  --learning-rate 3e-4 --warmup-steps 10 --seed "$SEED" --log-every 10

# 3. Reward model on the training-side pairs (chosen ranked above rejected); demonstrations score mean 0.
timed rm $PY -m training rm --base "$W/sft" --data "$W/hh/rankings.train.jsonl" \
  --eval-data "$W/hh/rankings.heldout.jsonl" --demonstrations "$W/hh/sft.train.jsonl" --out "$W/rm" \
  --max-steps 120 --batch-size 8 --max-length 192 --learning-rate 1e-4 --warmup-steps 10 --seed "$SEED" --log-every 10

# 4. PPO from the SFT policy against the reward model, on training-side prompts only.
timed ppo $PY -m training ppo --policy "$W/sft" --reward-model "$W/rm" --prompts "$W/prompts/train.jsonl" \
  --out "$W/ppo" --iterations 20 --batch-size 16 --minibatch-size 8 --ppo-epochs 2 --max-new-tokens 32 \
  --max-prompt-length 128 --learning-rate 1e-4 --critic-learning-rate 1e-4 --kl-coef 0.05 --seed "$SEED" \
  --checkpoint-every 1000 --sample-every 5 --device cpu --no-resume

# 5. Held-out evaluation: RM score, length and EOS rate of both policies (same prompts, same sampling
#    seeds, 32 new tokens, temperature 1), and KL(PPO ‖ SFT).
timed eval $PY bench/ppo_e2e.py eval --sft "$W/sft" --ppo "$W/ppo" --rm "$W/rm" \
  --prompts "$W/prompts/heldout.jsonl" --max-new-tokens 32 --seeds "$SEED" --out "$W/eval.json"
cat "$W/times.txt"
