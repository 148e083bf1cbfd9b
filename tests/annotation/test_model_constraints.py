"""The database itself refuses impossible states, whatever code path writes them."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import services
from annotation.models import (
    Candidate,
    Membership,
    ModelVersion,
    Project,
    Prompt,
    RankingEntry,
    Skip,
    Task,
    TaskSlot,
    content_hash,
    split_for_hash,
)
from tests.factories import best_first, make_prompt, make_ranking_task


def refused(make):
    with pytest.raises(IntegrityError), transaction.atomic():
        make()


@pytest.mark.parametrize("field, value", [("k", 1), ("k", 10), ("overlap", 0), ("lease_seconds", 5),
                                          ("top_p", 0), ("temperature", -1)])
def test_project_settings_out_of_range_are_refused(db, field, value):
    refused(lambda: Project.objects.create(name="p", **{field: value}))


def test_a_user_has_one_role_per_project(project_a, users):
    refused(lambda: Membership.objects.create(project=project_a, user=users["alice"], role="admin"))
    refused(lambda: Membership.objects.create(project=project_a, user=users["olga"], role="owner"))


def test_the_same_prompt_content_is_stored_once_per_project(project_a, project_b):
    make_prompt(project_a, "duplicate me")
    refused(lambda: Prompt.objects.create(project=project_a, text="duplicate me"))
    assert Prompt.objects.create(project=project_b, text="duplicate me").pk


def test_split_is_a_pure_function_of_content(project_a):
    prompt = make_prompt(project_a, "stable split")
    digest = content_hash("stable split", None)
    assert prompt.content_hash == digest and prompt.split == split_for_hash(digest)
    shares = [split_for_hash(content_hash(f"p{i}", None)) for i in range(2000)]
    assert 0.85 < shares.count("train") / 2000 < 0.95 and shares.count("test") > 40


def test_a_model_candidate_must_name_its_model_version(project_a):
    prompt = make_prompt(project_a)
    refused(lambda: Candidate.objects.create(prompt=prompt, text="x", origin="model"))
    version = ModelVersion.objects.create(project=project_a, stage="ppo", artifact_path="x")
    assert Candidate.objects.create(prompt=prompt, text="x", origin="model", model_version=version).pk


def test_a_slot_is_free_without_labeler_or_taken_with_one(project_a, users):
    slot = make_ranking_task(project_a).slots.get()
    refused(lambda: TaskSlot.objects.filter(pk=slot.pk).update(status="leased", labeler=None,
                                                               lease_expires=timezone.now()))
    refused(lambda: TaskSlot.objects.filter(pk=slot.pk).update(labeler=users["alice"]))
    refused(lambda: TaskSlot.objects.filter(pk=slot.pk).update(status="leased", labeler=users["alice"]))


def test_a_labeler_holds_one_slot_per_task(project_a, users):
    project_a.overlap = 2
    project_a.save()
    task = make_ranking_task(project_a)
    first, second = task.slots.all()
    now = timezone.now()
    TaskSlot.objects.filter(pk=first.pk).update(status="leased", labeler=users["alice"], lease_expires=now)
    refused(lambda: TaskSlot.objects.filter(pk=second.pk).update(status="leased", labeler=users["alice"],
                                                                 lease_expires=now))


def test_a_task_never_counts_more_done_than_its_overlap(project_a):
    task = make_ranking_task(project_a)
    refused(lambda: Task.objects.filter(pk=task.pk).update(done_count=2))


def test_rank_and_quality_stay_in_range(project_a, users):
    task = make_ranking_task(project_a)
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    entry = RankingEntry.objects.filter(ranking=ranking).first()
    refused(lambda: RankingEntry.objects.filter(pk=entry.pk).update(rank=0))
    refused(lambda: RankingEntry.objects.filter(pk=entry.pk).update(rank=10))
    refused(lambda: RankingEntry.objects.filter(pk=entry.pk).update(quality=8))
    refused(lambda: RankingEntry.objects.create(ranking=ranking, candidate_id=entry.candidate_id, rank=1))


def test_one_ranking_per_labeler_and_task(project_a, users):
    project_a.overlap = 2
    project_a.save()
    task = make_ranking_task(project_a)
    ranking, _ = services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=1)
    other_slot = task.slots.exclude(pk=ranking.slot_id).get()
    from annotation.models import Ranking

    refused(lambda: Ranking.objects.create(task=task, slot=other_slot, labeler=users["alice"], seconds_spent=1))
    refused(lambda: Ranking.objects.create(task=task, slot=ranking.slot, labeler=users["carol"], seconds_spent=1))


def test_a_skip_needs_a_reason_and_happens_once(project_a, users):
    task = make_ranking_task(project_a)
    refused(lambda: Skip.objects.create(task=task, labeler=users["alice"], reason=""))
    Skip.objects.create(task=task, labeler=users["alice"], reason="why")
    refused(lambda: Skip.objects.create(task=task, labeler=users["alice"], reason="again"))
