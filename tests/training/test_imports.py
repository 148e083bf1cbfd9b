"""training/ is a plain library: light to import, and never Django, the annotation app or TRL."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import training

FORBIDDEN = ("django", "annotation", "rlhf_platform", "trl", "rest_framework", "celery")


def test_importing_training_and_its_data_contracts_loads_neither_torch_nor_django():
    code = ("import sys, training, training.data, training.config, training.sources, training.reporting\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'django') if m in sys.modules)\n"
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_no_training_module_imports_django_annotation_or_trl():
    offenders = []
    for path in Path(training.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
