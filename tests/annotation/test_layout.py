"""The layout holds: no import circle inside annotation/, imports inside functions only to keep torch out
of the web process, no module reaching into access.py's private helpers, and a web process that never
loads torch."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "annotation"


def modules() -> dict[str, Path]:
    """annotation's modules by dotted name (migrations excluded: Django writes them)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_names(name: str, path: Path, node: ast.AST) -> list[str]:
    """Dotted modules an import statement loads (relative imports resolved; ``from x import y`` counts as
    x.y when y is a module, else x)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):  # function bodies included
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= {t for t in imported_names(name, path, node) if t in known and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_body():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_annotation_imports_another_in_a_circle():
    graph = import_graph()
    assert "annotation.loop.worker" in graph["annotation.tasks"]  # the walk sees real edges
    assert find_cycle(graph) is None, f"import circle: {' → '.join(find_cycle(graph))}"


def test_nothing_imports_the_celery_tasks_module():
    importers = [name for name, targets in import_graph().items() if "annotation.tasks" in targets]
    assert importers == [], "enqueue by task name (annotation.loop.rounds.enqueue) instead"


def test_imports_inside_functions_only_keep_torch_out_of_the_web_process():
    offenders = []
    for name, path in modules().items():
        source = path.read_text()
        lines = source.splitlines()
        for func in ast.walk(ast.parse(source)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line = lines[node.lineno - 1]
                    loads_training = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training.")
                    if not (loads_training and "# torch" in line):
                        offenders.append(f"{name}:{node.lineno}: {line.strip()}")
    assert offenders == []


def test_only_the_stage_runners_import_the_torch_side_of_the_training_library():
    torch_free = {"training", "training.config", "training.data", "training.sources"}  # plain Python
    importers = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training"):
                if node.module not in torch_free:
                    importers.add(name)
    assert importers == {"annotation.loop.stages"}


def test_no_module_calls_a_private_helper_of_access():
    offenders = []
    for name, path in modules().items():
        if name == "annotation.access":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "access" \
                    and node.attr.startswith("_"):
                offenders.append(f"{name}:{node.lineno}: access.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("access") \
                    and any(alias.name.startswith("_") for alias in node.names):
                offenders.append(f"{name}:{node.lineno}: from access import a private name")
    assert offenders == []


def test_views_fetch_objects_only_through_access():
    for path in (PACKAGE / "views.py", PACKAGE / "api" / "views.py"):
        assert "get_object_or_404" not in path.read_text(), path


def test_the_web_process_never_loads_torch():
    code = (
        "import sys, django; django.setup()\n"
        "from django.urls import resolve, reverse\n"
        "import rlhf_platform.urls, rlhf_platform.wsgi\n"
        "from rlhf_platform.celery import app\n"
        "app.loader.import_default_modules()  # what sending a task by name may trigger: autodiscovery\n"
        "assert 'annotation.tasks' in sys.modules and 'annotation.loop.stages' in sys.modules\n"
        "resolve('/api/projects/1/start-round/')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "rlhf_platform.settings"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
