#!/usr/bin/env bash
# Creates .venv-ls: a benchmark-only virtualenv holding Label Studio 1.23.2 with its production server,
# uWSGI (the package's own `uwsgi` extra: pyuwsgi, a binary wheel, so nothing is compiled). Only
# bench/labeling_vs_label_studio.py uses it, to run Label Studio side by side with our server (issue 13);
# the product never imports it. Ignored by git through the `.venv-*/` pattern.
#   bench/setup_label_studio_venv.sh            # idempotent; re-run after changing the pin below
# Label Studio needs no torch. constraints.txt is passed anyway: should a dependency ever ask for torch,
# it gets the local CPU build instead of ~3 GB of CUDA wheels, and the last line below fails loudly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LS_VENV:-$ROOT/.venv-ls}"
PYTHON="${PYTHON:-python3}"
LS_VERSION="1.23.2"
cd "$ROOT"

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "$PYTHON must be 3.10+" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.installed-label-studio-$LS_VERSION"
# pip's warnings about configured local package folders that do not exist are noise here: filtered out.
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
if [ ! -f "$stamp" ]; then
  quiet "$VENV/bin/pip" install -q --disable-pip-version-check -U pip
  quiet "$VENV/bin/pip" install -q --disable-pip-version-check "label-studio[uwsgi]==$LS_VERSION" -c constraints.txt
  touch "$stamp"
fi
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md, importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch got installed into the Label Studio venv"
print("label-studio", md.version("label-studio"), "pyuwsgi", md.version("pyuwsgi"), "Django", md.version("django"),
      "python", sys.version.split()[0])
EOF
test -x "$VENV/bin/uwsgi" || { echo "uwsgi is missing from $VENV/bin" >&2; exit 1; }
