#!/usr/bin/env bash
# The whole test suite. Installs what it needs (OS packages, virtualenv), starts a real PostgreSQL and
# a real Redis on loopback, runs the suite against SQLite and against PostgreSQL, and stops them.
# It never skips because a service is missing: it fails loudly instead.
#   scripts/test.sh [extra pytest args]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages postgresql redis-server chromium
ensure_venv requirements-dev.txt

WORK="$(mktemp -d /tmp/rlhf-test.XXXXXX)"
chmod 755 "$WORK"
cleanup() { stop_redis; stop_postgres; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting PostgreSQL and Redis on loopback"
start_postgres "$WORK/pg" "$(free_port)"
start_redis "$WORK/redis" "$(free_port)"
export CELERY_BROKER_URL="$REDIS_URL" VAR_DIR="$WORK/var" FAST_PASSWORD_HASHER=1 PYTHONUNBUFFERED=1
PYTEST=("$VENV/bin/python" -m pytest -q)

# The platform's tests run on both databases; the training library and browser tests, which don't
# depend on the database engine, run once (in the PostgreSQL pass).
log "platform tests on SQLite (all but the PostgreSQL-only ones)"
DATABASE_URL="sqlite:///$WORK/var/db.sqlite3" SQLITE_TEST_NAME="$WORK/var/test-db.sqlite3" \
  "${PYTEST[@]}" tests/annotation tests/deployment -m "not postgres" "$@"

log "whole suite on PostgreSQL $(basename "$(dirname "$(pg_bin)")") with Redis"
"${PYTEST[@]}" tests "$@"
