"""Django's deployment checklist passes with the production settings that README.md documents for
docker-compose behind HTTPS: ``manage.py check --deploy`` reports nothing, not even a warning."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTTPS = {"DEBUG": "false", "SECURE_COOKIES": "true", "SECURE_SSL_REDIRECT": "true", "SECURE_HSTS_SECONDS": "31536000",
         "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true", "SECURE_HSTS_PRELOAD": "true", "TRUST_X_FORWARDED_PROTO": "true",
         "ALLOWED_HOSTS": "labels.example.com"}


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    env = {**os.environ, **HTTPS, "SECRET_KEY": secrets.token_urlsafe(50),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "VAR_DIR": str(tmp_path)}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the browser tests' conftest sets it for Playwright's live server
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_compose_file_passes_every_https_setting_through():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert all(f"{name}: ${{{name}:-" in compose for name in HTTPS if name not in ("DEBUG", "ALLOWED_HOSTS"))
