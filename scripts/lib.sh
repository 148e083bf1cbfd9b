# Shared shell helpers for scripts/run.sh, scripts/test.sh and bench/. Source it; don't run it.
# Everything the project needs is installed here, so a fresh Debian machine with Python 3.11 works.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

# ensure_packages PACKAGE... : install Debian packages that are missing.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing OS packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
}

# ensure_venv [requirements file] : create .venv and install the pinned dependencies when they change.
ensure_venv() {
  local req="${1:-requirements.txt}"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON must be Python 3.11 or newer"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv in $VENV"
    "$PYTHON" -m venv "$VENV" || die "python venv failed (apt-get install python3-venv?)"
  fi
  local stamp="$VENV/.installed-$(basename "$req")"
  local want; want="$(cat "$ROOT/$req" "$ROOT/requirements.txt" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies ($req, torch pinned by constraints.txt)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -U pip >/dev/null
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/$req" -c "$ROOT/constraints.txt" \
      || die "pip install failed"
    echo "$want" > "$stamp"
  fi
  # The Django project imports as rlhf_platform from platform/ (never as a package named `platform`).
  local site; site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$ROOT/platform" > "$site/rlhf_platform_path.pth"
  echo "$ROOT" >> "$site/rlhf_platform_path.pth"
}

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# start_postgres DIR PORT : a throwaway cluster on loopback; sets DATABASE_URL.
start_postgres() {
  local dir="$1" port="$2" bin; bin="$(pg_bin)"
  [ -n "$bin" ] || die "PostgreSQL binaries not found"
  mkdir -p "$dir"
  local run=()
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; run=(runuser -u postgres --); fi
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U rlhf --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    >/dev/null || { cat "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
  "$bin/pg_isready" -h 127.0.0.1 -p "$port" -t 30 >/dev/null || die "PostgreSQL is not answering on $port"
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U rlhf rlhf || die "createdb failed"
  export DATABASE_URL="postgres://rlhf@127.0.0.1:$port/rlhf"
  PG_DIR="$dir"
}

stop_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  local run=(); [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  "${run[@]}" "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  PG_DIR=""
}

# start_redis DIR PORT : sets REDIS_URL.
start_redis() {
  local dir="$1" port="$2"
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null || die "redis-server failed"
  for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-cli -p "$port" ping | grep -q PONG || { cat "$dir/redis.log" >&2; die "Redis is not answering on $port"; }
  export REDIS_URL="redis://127.0.0.1:$port/0"
  REDIS_DIR="$dir"
}

stop_redis() {
  [ -n "${REDIS_DIR:-}" ] && [ -f "$REDIS_DIR/redis.pid" ] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null
  REDIS_DIR=""
}
