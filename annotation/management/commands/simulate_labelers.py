from __future__ import annotations

import importlib
import json
import random
import secrets
import threading
import urllib.error
import urllib.request
from collections import Counter

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from knox.models import AuthToken
from tqdm import tqdm

from annotation import services
from annotation.models import Project, Role


def load_callable(spec: str, what: str):
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise CommandError(f"--{what} must look like package.module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot import {spec!r}: {exc}") from None


def checked_ranks(ranks, k: int) -> list[int]:
    """The oracle's ranks, made dense (ties kept); a wrong shape is a clear error."""
    if not isinstance(ranks, (list, tuple)) or len(ranks) != k or not all(isinstance(r, int) for r in ranks):
        raise CommandError(f"the oracle must return {k} integer ranks, got {ranks!r}")
    distinct = sorted(set(ranks))
    return [distinct.index(r) + 1 for r in ranks]


class Client:
    """The real HTTP API, as a labeler's script would use it (token auth, JSON)."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def post(self, path: str, body: dict) -> tuple[int, dict | None]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Token {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


class Command(BaseCommand):
    help = ("Play simulated labelers through the real HTTP API: each logs in with a token, asks for the next "
            "task and submits the oracle's ranking (and the demonstrator's text, if given).")

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or id")
        parser.add_argument("--oracle", required=True, help="package.module:function(prompt, responses) -> ranks")
        parser.add_argument("--demonstrator", help="package.module:function(prompt) -> text")
        parser.add_argument("--labelers", type=int, default=4)
        parser.add_argument("--noise", type=float, default=0.0, help="chance a ranking is replaced by a random one")
        parser.add_argument("--tasks", type=int, default=0, help="stop after this many submissions per kind (0: all)")
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options):
        project = self.project(options["project"])
        oracle = load_callable(options["oracle"], "oracle")
        demonstrator = load_callable(options["demonstrator"], "demonstrator") if options["demonstrator"] else None
        if not 0 <= options["noise"] <= 1:
            raise CommandError("--noise must be between 0 and 1")
        clients = [Client(options["url"], token) for token in self.labelers(project, options["labelers"])]
        kinds = [("ranking", oracle)] + ([("demonstration", demonstrator)] if demonstrator else [])
        for kind, fn in kinds:
            counts = self.run(project, clients, kind, fn, options)
            self.stdout.write(f"{kind}: " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))

    def project(self, spec: str) -> Project:
        project = Project.objects.filter(pk=int(spec)).first() if spec.isdigit() else None
        project = project or Project.objects.filter(name=spec).first()
        if project is None:
            raise CommandError(f"no project {spec!r}")
        return project

    def labelers(self, project: Project, n: int) -> list[str]:
        User = get_user_model()
        tokens = []
        for i in range(1, n + 1):
            user, created = User.objects.get_or_create(username=f"sim-{project.pk}-{i}")
            if created:
                user.set_password(secrets.token_urlsafe(16))
                user.save()
            services.add_member(project=project, user=user, role=Role.LABELER)
            tokens.append(AuthToken.objects.create(user=user)[1])  # a fresh token each run (only digests are kept)
        return tokens

    def run(self, project: Project, clients: list[Client], kind: str, fn, options) -> Counter:
        limit, noise = options["tasks"], options["noise"]
        counts, lock = Counter(), threading.Lock()
        bar = tqdm(total=limit or None, desc=kind, unit="task", disable=options["verbosity"] == 0)
        failures: list[str] = []

        def work(index: int, client: Client) -> None:
            rng = random.Random(options["seed"] * 1000 + index)
            while not failures:
                with lock:
                    if limit and counts["submitted"] >= limit:
                        return
                status, task = client.post(f"/api/projects/{project.pk}/next-task/", {"kind": kind})
                if status == 204:
                    return
                if status != 200:
                    failures.append(f"next-task: HTTP {status}: {task}")
                    return
                if kind == "ranking":
                    texts = [c["text"] for c in task["candidates"]]
                    ranks = checked_ranks(fn(task["prompt"]["text"], texts), len(texts))
                    if rng.random() < noise:
                        ranks = checked_ranks([rng.randint(1, len(texts)) for _ in texts] or ranks, len(texts))
                    body = {"entries": [{"candidate": c["id"], "rank": r} for c, r in zip(task["candidates"], ranks,
                                                                                          strict=True)],
                            "seconds_spent": round(rng.uniform(5, 60), 1)}
                    status, reply = client.post(f"/api/tasks/{task['id']}/submit-ranking/", body)
                else:
                    body = {"text": str(fn(task["prompt"]["text"])), "seconds_spent": round(rng.uniform(20, 120), 1)}
                    status, reply = client.post(f"/api/tasks/{task['id']}/submit-demonstration/", body)
                with lock:
                    if status in (200, 201):
                        counts["submitted"] += 1
                        bar.update(1)
                    else:
                        counts[f"refused ({status})"] += 1

        threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bar.close()
        if failures:
            raise CommandError(failures[0])
        return counts
