"""Named users, each with one role (the comments say who may see what):

- alice labels project A;
- carol labels project A too (for overlap);
- bob labels project B and must not see alice's work;
- rita reviews project A: reads all of A, changes nothing;
- adam administers project A: manages A's prompts and members;
- sam is a site admin (Django staff): everything;
- olga belongs to no project: sees nothing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from annotation.models import Role
from tests.factories import make_project, make_user

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _test_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Tests don't run collectstatic; the production manifest storage is exercised by the gunicorn test.
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


@pytest.fixture
def users(db):
    names = ["alice", "carol", "bob", "rita", "adam", "olga"]
    people = {name: make_user(name) for name in names}
    people["sam"] = make_user("sam", staff=True)
    return people


@pytest.fixture
def project_a(users):
    return make_project("A", members={users["alice"]: Role.LABELER, users["carol"]: Role.LABELER,
                                      users["rita"]: Role.REVIEWER, users["adam"]: Role.ADMIN})


@pytest.fixture
def project_b(users):
    return make_project("B", members={users["bob"]: Role.LABELER})


@pytest.fixture
def client_for(users):
    """client_for("alice") → an APIClient authenticated as alice (None → anonymous)."""

    def make(name: str | None) -> APIClient:
        client = APIClient()
        if name is not None:
            client.force_authenticate(users[name])
        return client

    return make


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the public data must be beside the checkout at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def postgres_db(db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.fail("this test needs PostgreSQL: run it through scripts/test.sh (DATABASE_URL=postgres://…)")


@pytest.fixture(scope="session")
def venv_python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: run the suite through scripts/test.sh, which starts Redis")
    import redis

    redis.Redis.from_url(url).ping()
    return url
