"""The labeling queue's hot path in SQL: lease the next task, lock the slot a submission fills, finish it.

``services`` decides (validation, gold turns, retries, idempotency); this module runs the few statements a
labeling cycle needs, written by hand because building them with the ORM cost more CPU than running them
(issue 13). Their cost does not grow with the queue:

- **Order.** The free slots of open tasks are the partial index ``slot_queue``, keyed by (project, kind,
  gold, the task's done count descending, task id, slot index): nearest-to-complete tasks first, then the
  oldest. Each slot carries its task's done count, openness and gold flag (``TaskSlot.task_*``), kept on
  free slots: ``finish_slot`` copies a task's new count to its free slots, a slot that becomes free copies
  it from its task (``TaskSlotQuerySet.release``), and other changes of a task call ``sync_queue_order``.
  A claim still checks the task row itself (one primary-key probe per slot read), so a copy that lags (a
  slot that was locked while its task changed) can only reorder, never serve a closed or gold task.
- **Claim.** ``lock_labeler`` then ``claim``: one UPDATE … RETURNING leases the labeler's held lease
  (renewed), else the first free slot (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so labelers pass each
  other) or the first expired lease of someone else, whichever comes first in the order. On PostgreSQL the
  same statement returns the task; on SQLite a second one reads it.
- **Locks.** PostgreSQL: the labeler's user row (``FOR NO KEY UPDATE``, in its own statement so that the
  claim's snapshot is taken after the lock: a concurrent request of the same labeler that just leased is
  seen), then the slot. A submission locks its slot, then its task row (``finish_slot``), then those of the
  task's free slots that nobody holds (``SKIP LOCKED``); gold and admin changes lock the task row, then its
  free slots the same way. So nothing waits for a slot while holding a task row. SQLite: every transaction
  is ``BEGIN IMMEDIATE``, so writers run one at a time and no row lock is needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection

from .prepared import statement_cursor as _cursor


@dataclass(frozen=True)
class CandidateRow:
    id: int
    text: str


@dataclass(frozen=True)
class TaskRow:
    """What the task API shows of a task, read with its lease (``TaskSerializer``'s fields)."""

    id: int
    kind: str
    project: int
    round: int | None
    target_overlap: int
    done_count: int
    status: str
    is_gold: bool
    project_overlap: int
    prompt_id: int
    prompt_text: str
    prompt_messages: list[dict] | None
    prompt_language: str
    candidates: tuple[CandidateRow, ...]


class Lost:
    """The slot picked was taken between the pick and the UPDATE (PostgreSQL, READ COMMITTED): ask again."""


LOST = Lost()

_TASK_COLUMNS = """t.id, t.kind, t.project_id, t.round_id, t.target_overlap, t.done_count, t.status, t.is_gold,
       pr.overlap, p.id, p.text, p.messages, p.language, c.id, c.text"""
_TASK_JOINS = """LEFT JOIN annotation_prompt p ON p.id = t.prompt_id
  LEFT JOIN annotation_project pr ON pr.id = t.project_id
  LEFT JOIN annotation_taskcandidate tc ON tc.task_id = t.id
  LEFT JOIN annotation_candidate c ON c.id = tc.candidate_id"""


def _probe(table: str, condition: str) -> str:
    """A correlated check evaluated once per slot read, as an index probe: ``OFFSET 0`` keeps PostgreSQL from
    turning it into a join (over all of a labeler's slots and skips, or over every open task), and keeps the
    plan the same whatever the parameters, so that a prepared statement's generic plan is the right one."""
    return f"(SELECT 1 FROM {table} WHERE {condition} LIMIT 1 OFFSET 0)"


def _first(*, gold: bool, expired: bool, lock: bool) -> str:
    """A subquery: the first slot the labeler may lease with its place in the queue (done count, task,
    index). Free slots are read in ``slot_queue``'s order; expired leases (few: ``expire_leases`` frees them
    every few minutes) through ``slot_leases``, whose range holds only the expired ones, and ordered by
    their task's current count (a leased slot's copy may lag). For each slot read, primary- and unique-index
    probes check that its task is open (and gold or not) and that the labeler holds, did or skipped none of
    it."""
    gold_sql = "TRUE" if gold else "FALSE"
    if expired:
        which = "s.status = 'leased' AND s.lease_expires <= %(now)s"
        done = "(SELECT t.done_count FROM annotation_task t WHERE t.id = s.task_id)"
    else:
        which, done = f"s.status = 'free' AND s.task_open AND s.task_is_gold = {gold_sql}", "s.task_done_count"
    return f"""SELECT s.id, {done} AS done, s.task_id, s."index" FROM annotation_taskslot s
     WHERE s.project_id = %(project)s AND s.kind = %(kind)s AND {which}
       AND EXISTS {_probe("annotation_task t", f"t.id = s.task_id AND t.status = 'open' AND t.is_gold = {gold_sql}")}
       AND NOT EXISTS {_probe("annotation_taskslot m", "m.task_id = s.task_id AND m.labeler_id = %(user)s")}
       AND NOT EXISTS {_probe("annotation_skip k", "k.task_id = s.task_id AND k.labeler_id = %(user)s")}
     ORDER BY 2 DESC, s.task_id, s."index" LIMIT 1{" FOR UPDATE OF s SKIP LOCKED" if lock else ""}"""


def _best(*, gold: bool, lock: bool) -> str:
    """A scalar subquery: the first free slot or the first expired lease, whichever comes first in the
    queue's order (on PostgreSQL the other one stays locked until the transaction ends; others skip it)."""
    free, expired = _first(gold=gold, expired=False, lock=lock), _first(gold=gold, expired=True, lock=lock)
    return f"""(SELECT id FROM (SELECT * FROM ({free}) f UNION ALL SELECT * FROM ({expired}) e) c
      ORDER BY done DESC, task_id, "index" LIMIT 1)"""


_HELD = f"""(SELECT s.id FROM annotation_taskslot s
      WHERE s.labeler_id = %(user)s AND s.status = 'leased' AND s.project_id = %(project)s AND s.kind = %(kind)s
        AND EXISTS {_probe("annotation_task t", "t.id = s.task_id AND t.status = 'open'")}
      ORDER BY s.leased_at LIMIT 1)"""

# Checked again on the row the UPDATE locks: on PostgreSQL another transaction may have changed it since the
# statement's snapshot (an expired lease of ours taken over, say); then nothing is updated.
_STILL_MINE_OR_CLAIMABLE = """(status = 'free' OR (status = 'leased'
        AND (labeler_id = %(user)s OR lease_expires <= %(now)s)))"""


@cache
def _pick_sql(vendor: str, gold: bool) -> str:
    """The slot to lease, by preference: the held one, then the queue's first claimable slot. A gold turn
    (``services.gold_turn``) prefers a gold task, but only while ordinary work exists: gold never shows up
    alone in an otherwise empty queue."""
    lock = vendor == "postgresql"
    if not gold:
        return f"COALESCE({_HELD}, {_best(gold=False, lock=lock)})"
    ordinary = " OR ".join(f"EXISTS ({_first(gold=False, expired=expired, lock=False)})" for expired in (False, True))
    return (f"COALESCE({_HELD}, CASE WHEN {ordinary} THEN {_best(gold=True, lock=lock)} END, "
            f"{_best(gold=False, lock=lock)})")


@cache
def _claim_sql(vendor: str, gold: bool) -> str:
    lease = "status = 'leased', labeler_id = %(user)s, leased_at = %(now)s, lease_expires = %(expires)s"
    if vendor == "postgresql":
        # One statement: pick, lease and read the task. The pick is its own CTE so that an UPDATE that found
        # the row changed (LOST) is told apart from an empty queue.
        return f"""WITH pick AS MATERIALIZED (SELECT {_pick_sql(vendor, gold)} AS id),
  claimed AS (UPDATE annotation_taskslot SET {lease}
              WHERE id = (SELECT id FROM pick) AND {_STILL_MINE_OR_CLAIMABLE} RETURNING task_id)
SELECT pick.id, {_TASK_COLUMNS}
  FROM pick LEFT JOIN claimed ON TRUE LEFT JOIN annotation_task t ON t.id = claimed.task_id
  {_TASK_JOINS}
 ORDER BY tc.position"""
    return f"""UPDATE annotation_taskslot SET {lease}
 WHERE id = {_pick_sql(vendor, gold)} AND {_STILL_MINE_OR_CLAIMABLE} RETURNING task_id"""


_TASK_SQL = f"SELECT {_TASK_COLUMNS} FROM annotation_task t {_TASK_JOINS} WHERE t.id = %(task)s ORDER BY tc.position"


def _task_row(rows: list[tuple]) -> TaskRow:
    first = rows[0]
    messages = first[11]
    return TaskRow(
        id=first[0], kind=first[1], project=first[2], round=first[3], target_overlap=first[4], done_count=first[5],
        status=first[6], is_gold=bool(first[7]), project_overlap=first[8], prompt_id=first[9],
        prompt_text=first[10], prompt_messages=json.loads(messages) if isinstance(messages, str) else messages,
        prompt_language=first[12],
        candidates=tuple(CandidateRow(id=row[13], text=row[14]) for row in rows if row[13] is not None),
    )


def lock_labeler(*, user_id: int, project_id: int, count_served: bool = False) -> int:
    """Serialise one labeler's queue operations (two tabs, a double click): on PostgreSQL, lock their user
    row ``FOR NO KEY UPDATE`` (their own submissions, whose foreign keys take KEY SHARE on it, are not held
    up); on SQLite the IMMEDIATE transaction already did. Needs an open transaction.

    With ``count_served``, returns how many ranking slots of the project the labeler holds or did (the gold
    draw's turn number), else 0. On PostgreSQL that count is read with the lock, in the snapshot taken
    before it: it may still count a slot that a concurrent skip of the same labeler just gave back, which
    only moves the labeler to another (equally random) draw."""
    served = ("(SELECT COUNT(*) FROM annotation_taskslot WHERE project_id = %(project)s AND kind = 'ranking'"
              " AND labeler_id = %(user)s)") if count_served else "0"
    params = {"user": user_id, "project": project_id}
    with _cursor() as cursor:
        if connection.features.has_select_for_update:
            table = get_user_model()._meta.db_table
            cursor.execute(f"SELECT {served} FROM {table} WHERE id = %(user)s FOR NO KEY UPDATE", params)
            row = cursor.fetchone()
            return row[0] if row else 0
        if not count_served:
            return 0
        cursor.execute(f"SELECT {served}", params)
        return cursor.fetchone()[0]


def claim(*, user_id: int, project_id: int, kind: str, now: datetime, expires: datetime,
          gold: bool = False) -> TaskRow | Lost | None:
    """Lease the labeler's held task of ``kind`` (renewed until ``expires``) or the next one; returns the task,
    None when there is nothing to lease, or LOST when the slot picked was taken meanwhile. Call
    ``lock_labeler`` first, in the same transaction."""
    ops = connection.ops
    params = {"user": user_id, "project": project_id, "kind": kind, "now": ops.adapt_datetimefield_value(now),
              "expires": ops.adapt_datetimefield_value(expires)}
    with _cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor, gold), params)
        rows = cursor.fetchall()
        if connection.vendor == "postgresql":
            if rows[0][0] is None:
                return None
            return LOST if rows[0][1] is None else _task_row([row[1:] for row in rows])
        # SQLite: writers run one at a time, so the row cannot change between the pick and the UPDATE.
        if not rows:
            return None
        cursor.execute(_TASK_SQL, {"task": rows[0][0]})
        return _task_row(cursor.fetchall())


@dataclass(frozen=True)
class LockedSlot:
    id: int
    status: str
    order: list[int]  # the task's candidate ids, in display order


def lock_slot(*, task_id: int, user_id: int) -> LockedSlot | None:
    """Lock the labeler's slot of the task (None if they have none) and read the task's candidate ids in the
    order the labeler was shown them. Needs an open transaction."""
    lock = " FOR UPDATE OF s" if connection.features.has_select_for_update else ""
    with _cursor() as cursor:
        cursor.execute(f"""SELECT s.id, s.status, tc.candidate_id
  FROM annotation_taskslot s LEFT JOIN annotation_taskcandidate tc ON tc.task_id = s.task_id
 WHERE s.task_id = %(task)s AND s.labeler_id = %(user)s ORDER BY tc.position{lock}""",
                       {"task": task_id, "user": user_id})
        rows = cursor.fetchall()
    if not rows:
        return None
    return LockedSlot(id=rows[0][0], status=rows[0][1], order=[row[2] for row in rows if row[2] is not None])


_FINISH_TASK = """UPDATE annotation_task SET done_count = done_count + 1,
       status = CASE WHEN done_count + 1 >= target_overlap THEN 'complete' ELSE status END
 WHERE id = %(task)s RETURNING id, done_count, status, is_gold"""
_FINISH_SLOTS = """UPDATE annotation_taskslot AS s
   SET status = CASE WHEN s.id = %(slot)s THEN 'done' ELSE s.status END,
       lease_expires = CASE WHEN s.id = %(slot)s THEN NULL ELSE s.lease_expires END,
       task_done_count = {done}, task_open = {open}, task_is_gold = {gold}
  {source}WHERE s.task_id = %(task)s AND (s.id = %(slot)s OR {free})"""
# PostgreSQL: the task's free slots that nobody holds locked, read after the task row is ours (the join on t):
# locks are taken task first, then slots, as the gold and admin changes take them. A free slot someone holds
# locked is being leased, or lost a claim's pick; it copies the order again when it next becomes free.
# Waiting for it instead could close a circle: its holder may be a submission waiting for this task row.
_UNLOCKED_FREE_SLOTS = """free AS (SELECT s.id FROM annotation_taskslot s JOIN t ON s.task_id = t.id
                WHERE s.status = 'free' FOR UPDATE OF s SKIP LOCKED)"""


def finish_slot_ctes(*, slot_id: int, task_id: int) -> tuple[str, dict] | None:
    """``finish_slot``'s writes as CTEs (``t``, ``free``, ``finished``) with their parameters, to be run in the
    statement that writes the label (``prepared.PreparedInsertTree``); None where there are no data-modifying
    CTEs (SQLite), where ``finish_slot`` runs them."""
    if connection.vendor != "postgresql":
        return None
    slots = _FINISH_SLOTS.format(done="t.done_count", open="t.status = 'open'", gold="t.is_gold",
                                 source="FROM t ", free="s.id IN (SELECT id FROM free)")
    return (f"t AS ({_FINISH_TASK}),\n  {_UNLOCKED_FREE_SLOTS},\n  finished AS ({slots} RETURNING s.id)",
            {"slot": slot_id, "task": task_id})


def finish_slot(*, slot_id: int, task_id: int) -> None:
    """Mark the (locked) slot done, count it on its task (complete once the count reaches the target) and
    copy the new count to the task's free slots. The task's UPDATE reads the row's current values, so
    concurrent submissions on other slots of the task never compute from a stale count. Leased slots of the
    task are left alone (their holders may have them locked): they copy the count when they become free.
    Waits for nothing but the task row (concurrent submissions of the task take turns there)."""
    params = {"slot": slot_id, "task": task_id}
    with _cursor() as cursor:
        if connection.vendor == "postgresql":
            ctes, params = finish_slot_ctes(slot_id=slot_id, task_id=task_id)
            cursor.execute(f"WITH {ctes} SELECT 1", params)
            return
        cursor.execute(_FINISH_TASK, params)
        _, done, status, gold = cursor.fetchone()
        cursor.execute(_FINISH_SLOTS.format(done="%(done)s", open="%(open)s", gold="%(gold)s", source="",
                                            free="s.status = 'free'"),
                       {**params, "done": done, "open": status == "open", "gold": gold})
