"""platform/ holds the Django project but must never shadow the standard library's ``platform``
module, which ``uuid`` (so Django) and ``torch`` rely on. Checked in the test, web and worker
processes."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = sysconfig.get_paths()["stdlib"]


def test_the_test_process_uses_the_standard_library_platform():
    import platform

    assert platform.__file__.startswith(STDLIB)
    assert platform.system() == "Linux"
    assert not (ROOT / "platform" / "__init__.py").exists(), "platform/ must not be a package"


def test_python_started_in_the_repo_root_imports_django_torch_and_the_project():
    code = ("import platform, uuid, django, torch, rlhf_platform, sysconfig; "
            "print(platform.__file__.startswith(sysconfig.get_paths()['stdlib']), platform.system(), "
            "torch.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stdlib, system, torch_version = out.split()
    assert (stdlib, system) == ("True", "Linux") and torch_version.startswith("2.13.0")


def test_manage_py_runs_with_the_standard_library_platform():
    code = "import platform, sysconfig; print(platform.__file__.startswith(sysconfig.get_paths()['stdlib']))"
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "True"


@pytest.mark.services
def test_the_web_process_uses_the_standard_library_platform(web_server):
    body = json.load(urllib.request.urlopen(web_server + "/healthz", timeout=10))
    assert body == {**body, "ok": True, "platform_is_stdlib": True, "platform_system": "Linux"}


@pytest.mark.services
def test_the_worker_process_uses_the_standard_library_platform(celery_worker):
    from annotation.tasks import health

    result = health.delay().get(timeout=60)
    assert result["ok"] and result["platform_is_stdlib"] and result["platform_system"] == "Linux"
