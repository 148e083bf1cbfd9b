# ruff: noqa: E501
"""PROTOTYPE FOR MEASUREMENT ONLY, never served in production: a lean next-task / submit-ranking.

Kept as it was measured (issue 2; its approach now lives in ``annotation/queue.py``), long SQL lines and all.

It wraps ``rlhf_platform.wsgi`` and monkeypatches the two hot API actions so the benchmark can show
what the changes suggested in docs/benchmarks.md ("Labeling cycle (issue 2)") would buy, on the same
machine and with the same integrity checks:

    PYTHONPATH=bench .venv/bin/python bench/labeling_cycle.py --labelers 16 --tasks 8000 --duration 30 \
        --app lean_cycle_prototype:application

What it changes (each can be switched off with the variable set to 0):

- LEAN_VIEWS: next-task is one membership/project read plus one SQL statement (lock the labeler's
  user row, renew a held lease or claim a free slot ``FOR UPDATE SKIP LOCKED`` through a partial index
  on free slots ordered by (task, index), and return the task, its prompt and its candidates);
  submit-ranking locks the labeler's slot and reads task, role and candidate ids in one statement,
  then two INSERTs and one UPDATE. Responses are built as dicts, not DRF serializers. Anything unusual
  (no lease, a retry, a wrong ranking, another kind) falls back to the real views.
- LEAN_AUTH_CACHE: token → user cached in the process for 60 s.
- LEAN_NO_HEALTHCHECK: no ``SELECT 1`` connection health check before each request.

Known gaps compared with the real service (why this is a prototype): it orders the queue by task id
only (the real queue serves nearest-to-complete tasks first, which needs the task's done_count on the
slot), it does not re-lease expired leases in the hot path (``expire_leases`` would have to run), and a
revoked token keeps working for up to 60 s.
"""
import functools
import json
import os
import time
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_platform.settings")
from django.db import connection, connections, transaction  # noqa: E402
from django.http import Http404  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework import status as st  # noqa: E402
from rest_framework.authentication import TokenAuthentication  # noqa: E402
from rest_framework.exceptions import ValidationError  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rlhf_platform.wsgi import application  # noqa: E402,F401

from annotation.api import serializers as s  # noqa: E402
from annotation.api import views

if os.environ.get("LEAN_NO_HEALTHCHECK", "1") == "1":
    connections["default"].settings_dict["CONN_HEALTH_CHECKS"] = False

if os.environ.get("LEAN_AUTH_CACHE", "1") == "1":
    _orig_auth = TokenAuthentication.authenticate_credentials
    _cache = {}

    def authenticate_credentials(self, key):
        hit = _cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        result = _orig_auth(self, key)
        _cache[key] = (time.monotonic() + 60, result)
        return result

    TokenAuthentication.authenticate_credentials = authenticate_credentials

CLAIM_SQL = """
WITH me AS (SELECT id FROM auth_user WHERE id = %(u)s FOR UPDATE),
held AS (
  UPDATE annotation_taskslot SET leased_at = %(now)s, lease_expires = %(exp)s
  WHERE id = (SELECT s.id FROM annotation_taskslot s, me
              WHERE s.labeler_id = me.id AND s.project_id = %(p)s AND s.kind = %(k)s AND s.status = 'leased'
              ORDER BY s.leased_at LIMIT 1)
  RETURNING task_id),
pick AS (
  SELECT s.id FROM annotation_taskslot s
  WHERE NOT EXISTS (SELECT 1 FROM held) AND s.project_id = %(p)s AND s.kind = %(k)s AND s.status = 'free'
    AND NOT EXISTS (SELECT 1 FROM annotation_taskslot m WHERE m.task_id = s.task_id AND m.labeler_id = %(u)s)
    AND NOT EXISTS (SELECT 1 FROM annotation_skip k WHERE k.task_id = s.task_id AND k.labeler_id = %(u)s)
  ORDER BY s.task_id, s.index LIMIT 1 FOR UPDATE SKIP LOCKED),
claimed AS (
  UPDATE annotation_taskslot s SET status = 'leased', labeler_id = %(u)s, leased_at = %(now)s, lease_expires = %(exp)s
  FROM pick WHERE s.id = pick.id RETURNING s.task_id)
SELECT t.id, t.kind, t.project_id, t.round_id, t.target_overlap, t.done_count, t.status,
       p.id, p.text, p.messages, p.language,
       (SELECT json_agg(json_build_object('id', c.id, 'text', c.text) ORDER BY tc.position)
          FROM annotation_taskcandidate tc JOIN annotation_candidate c ON c.id = tc.candidate_id
         WHERE tc.task_id = t.id)
FROM annotation_task t JOIN annotation_prompt p ON p.id = t.prompt_id
WHERE t.id IN (SELECT task_id FROM held UNION ALL SELECT task_id FROM claimed)
"""

if os.environ.get("LEAN_VIEWS", "1") == "1":
    with connection.cursor() as c:
        c.execute("CREATE INDEX IF NOT EXISTS proto_free_slot_queue ON annotation_taskslot "
                  "(project_id, kind, task_id, index) WHERE status = 'free'")
    connection.close()
    orig_next = views.ProjectViewSet.next_task
    orig_submit = views.TaskViewSet.submit_ranking

    def next_task(self, request, pk=None):
        if request.data.get("kind") != "ranking":
            return orig_next(self, request, pk)
        user = request.user
        with connection.cursor() as c:
            c.execute("SELECT p.lease_seconds, p.rankings_enabled FROM annotation_project p JOIN annotation_membership m "
                      "ON m.project_id = p.id AND m.user_id = %s WHERE p.id = %s", [user.pk, pk])
            row = c.fetchone()
        if row is None:
            raise Http404("No such project.")
        if not row[1]:
            raise ValidationError({"kind": ["ranking tasks are not enabled in this project"]})
        now = timezone.now()
        exp = now + timedelta(seconds=row[0])
        with transaction.atomic(), connection.cursor() as c:
            c.execute(CLAIM_SQL, {"u": user.pk, "p": int(pk), "k": "ranking", "now": now, "exp": exp})
            r = c.fetchone()
        if r is None:
            return Response(status=st.HTTP_204_NO_CONTENT)
        return Response({
            "id": r[0], "kind": r[1], "project": r[2], "round": r[3],
            "prompt": {"id": r[7], "text": r[8], "messages": r[9], "language": r[10]},
            "candidates": json.loads(r[11]) if isinstance(r[11], str) else r[11],
            "target_overlap": r[4], "done_count": r[5], "status": r[6], "lease_expires": exp.isoformat(),
        })

    def submit_ranking(self, request, pk=None):
        body = s.RankingSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        entries = data["entries"]
        user = request.user
        now = timezone.now()
        with transaction.atomic(), connection.cursor() as c:
            c.execute("""SELECT s.id, s.status, t.kind, t.status, m.role,
                                ARRAY(SELECT candidate_id FROM annotation_taskcandidate WHERE task_id = t.id),
                                t.project_id
                           FROM annotation_taskslot s JOIN annotation_task t ON t.id = s.task_id
                           LEFT JOIN annotation_membership m ON m.project_id = t.project_id AND m.user_id = s.labeler_id
                          WHERE s.task_id = %s AND s.labeler_id = %s FOR UPDATE OF s""", [pk, user.pk])
            row = c.fetchone()
            if row is None or row[1] != "leased" or row[2] != "ranking" or row[3] == "cancelled" or row[4] is None:
                fallback = True
            else:
                fallback = False
                given = [e["candidate"] for e in entries]
                ranks = sorted({e["rank"] for e in entries})
                if len(set(given)) != len(given) or set(given) != set(row[5]) or ranks != list(range(1, len(ranks) + 1)):
                    fallback = True
            if not fallback:
                c.execute("INSERT INTO annotation_ranking (task_id, slot_id, labeler_id, comment, seconds_spent, "
                          "review_status, created, updated) VALUES (%s, %s, %s, %s, %s, 'submitted', %s, %s) RETURNING id",
                          [pk, row[0], user.pk, data.get("comment", ""), data["seconds_spent"], now, now])
                rid = c.fetchone()[0]
                c.execute("INSERT INTO annotation_rankingentry (ranking_id, candidate_id, rank, fails_instruction, "
                          "hallucination, inappropriate, harmful, quality) SELECT %s, * FROM unnest(%s::bigint[], "
                          "%s::smallint[], %s::bool[], %s::bool[], %s::bool[], %s::bool[], %s::smallint[])",
                          [rid, given, [e["rank"] for e in entries]] + [[bool(e.get(f)) for e in entries] for f in
                           ("fails_instruction", "hallucination", "inappropriate", "harmful")] + [[e.get("quality") for e in entries]])
                c.execute("WITH sl AS (UPDATE annotation_taskslot SET status = 'done', lease_expires = NULL WHERE id = %s) "
                          "UPDATE annotation_task SET done_count = done_count + 1, status = CASE WHEN done_count >= "
                          "target_overlap - 1 THEN 'complete' ELSE status END WHERE id = %s", [row[0], pk])
        if fallback:
            return orig_submit(self, request, pk)
        return Response({"id": rid, "task": int(pk), "project": row[6], "labeler": user.pk, "entries": [dict(e) for e in entries],
                         "comment": data.get("comment", ""), "seconds_spent": data["seconds_spent"],
                         "review_status": "submitted", "created": now.isoformat(), "updated": now.isoformat()},
                        status=201)

    views.ProjectViewSet.next_task = functools.wraps(orig_next)(next_task)
    views.TaskViewSet.submit_ranking = functools.wraps(orig_submit)(submit_ranking)
