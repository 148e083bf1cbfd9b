"""The public files in ../shared/data import with exact counts, a second import creates nothing, and
mutated copies are refused with the bad lines' numbers and nothing written.

Every expected number is hard-coded and was checked two ways: against the data README
(../shared/data/README.md: 670 human-written OpenAssistant replies, 212 ranked groups of sizes 57×2,
117×3, 27×4, 3×5, 6×6, 1×8, 1×9; 384 tied FineGrainedRLHF judgments; helpful-base's 2 identical and
4 empty pairs), and by the small walks in this file, which read the files with nothing of the project's
code: a recursive walk of the OpenAssistant trees, a brute-force search over all 75 weak orders of 4
answers for FineGrainedRLHF, and ``os.path.commonprefix`` for HH-RLHF.
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from rest_framework.exceptions import ValidationError

from annotation.importing import format_errors
from annotation.imports.importer import import_file
from annotation.models import Candidate, Demonstration, Prompt, Ranking, RankingEntry, Task, TaskKind, TaskSlot
from tests.factories import make_project

pytestmark = pytest.mark.slow
OASST = "open-assistant/en_100_tree.jsonl"
FINEGRAINED = "finegrained-rlhf-qa-feedback/dev_feedback.json"
HELPFUL = "hh-rlhf/helpful-base/test.jsonl.gz"
NOTHING_NEW = {"prompts": 0, "demonstrations": 0, "rankings": 0, "candidates": 0}


def database_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (
        Prompt, Task, TaskSlot, Candidate, Ranking, RankingEntry, Demonstration, get_user_model())}


# --- OpenAssistant -----------------------------------------------------------------------------------


def oasst_by_hand(path) -> dict:
    """Prompter messages, human assistant replies, and ranked groups by size, walking the trees."""
    counts = {"prompts": 0, "demonstrations": 0, "groups": Counter()}

    def walk(message):
        if message["role"] == "prompter":
            counts["prompts"] += 1
            ranked = [r for r in message["replies"] if "rank" in r]
            if ranked:
                counts["groups"][len(ranked)] += 1
        elif not message["synthetic"]:
            counts["demonstrations"] += 1
        for reply in message["replies"]:
            walk(reply)

    for line in path.read_text().splitlines():
        walk(json.loads(line)["prompt"])
    return counts


def test_the_openassistant_trees_import_with_exact_counts(db, shared_data):
    path = shared_data / OASST
    assert oasst_by_hand(path) == {"prompts": 480, "demonstrations": 670,
                                   "groups": Counter({2: 57, 3: 117, 4: 27, 5: 3, 6: 6, 8: 1, 9: 1})}
    project = make_project("oasst", k=4)
    report = import_file(project=project, path=path, fmt="oasst")
    assert report == {
        "format": "oasst", "source": "oasst", "records": 100,
        "created": {"prompts": 480, "demonstrations": 670, "rankings": 212, "candidates": 641},
        "duplicates": {"prompts": 0, "demonstrations": 0, "rankings": 0},
        "rankings_by_k": {"2": 57, "3": 117, "4": 27, "5": 3, "6": 6, "8": 1, "9": 1},
        "ties": {"rankings": 0, "pairs": 0},
        # 17 synthetic assistant messages (the README's 22 synthetic less 5 prompter ones); one group is
        # only partly ranked.
        "left_out": {"synthetic reply (not a demonstration)": 17, "unranked reply beside ranked ones": 1},
    }
    assert Prompt.objects.filter(project=project).count() == 480
    assert Demonstration.objects.count() == 670 and Ranking.objects.count() == 212
    assert RankingEntry.objects.count() == 641 == 57 * 2 + 117 * 3 + 27 * 4 + 3 * 5 + 6 * 6 + 8 + 9
    # Each label has its task; each prompt also has the project's own demonstration task.
    assert Task.objects.filter(kind=TaskKind.DEMONSTRATION).count() == 670 + 480
    assert Task.objects.filter(kind=TaskKind.RANKING, status=Task.Status.COMPLETE).count() == 212
    # The README's example, tree 3: OA ranks 0, 1, 2 are ranks 1, 2, 3.
    question = [{"role": "user", "content": "What differences are there between ChatGPT and Instructional GPT?"}]
    ranking = Ranking.objects.get(task__prompt__messages=question)
    texts = [e.candidate.text for e in ranking.entries.select_related("candidate").order_by("rank")]
    assert [t[:50] for t in texts] == ["Both ChatGPT and InstructGPT are auto-regressive l",
                                       "The main difference between ChatGPT and Instructio",
                                       "Both ChatGPT and InstructGPT are Transformer-based"]
    assert ranking.labeler.username == "oasst-import" and not ranking.labeler.is_active
    # Synthetic replies ranked by people are candidates from a model, never demonstrations.
    assert Candidate.objects.filter(origin=Candidate.Origin.IMPORTED).count() == 17
    assert not Demonstration.objects.filter(text__in=Candidate.objects.filter(
        origin=Candidate.Origin.IMPORTED).values("text")).exists()

    before = database_counts()
    again = import_file(project=project, path=path, fmt="oasst")
    assert database_counts() == before
    assert again["created"] == NOTHING_NEW
    assert again["duplicates"] == {"prompts": 480, "demonstrations": 670, "rankings": 212}


def test_mutated_openassistant_trees_are_refused_by_line(db, shared_data, tmp_path):
    lines = (shared_data / OASST).read_text().splitlines()
    tree = json.loads(lines[11])
    del tree["prompt"]["replies"][0]["text"]
    lines[11] = json.dumps(tree)
    lines[56] = lines[56][: len(lines[56]) // 2]  # cut in half
    path = tmp_path / "trees.jsonl"
    path.write_text("\n".join(lines) + "\n")
    project = make_project("oasst", k=4)
    before = database_counts()
    with pytest.raises(ValidationError) as err:
        import_file(project=project, path=path, fmt="oasst")
    messages = format_errors(err.value.detail)
    assert database_counts() == before
    assert [m.split(":")[0] for m in messages] == ["line 12", "line 57"]
    assert messages[0] == "line 12: prompt.replies.0: 'text' must be a string"
    assert messages[1].startswith("line 57: not valid JSON: Unterminated string")


# --- FineGrainedRLHF ---------------------------------------------------------------------------------

WEAK_ORDERS = [r for r in itertools.product(range(1, 5), repeat=4) if set(r) == set(range(1, max(r) + 1))]
PAIRS = list(itertools.combinations(range(4), 2))


def preorder_by_search(preference: list[int]) -> tuple[int, ...] | None:
    """The one weak order of 4 answers that agrees with all 6 judgments, found by trying all 75."""
    agree = {0: lambda a, b: a == b, 1: lambda a, b: a < b, 2: lambda a, b: a > b}
    found = [r for r in WEAK_ORDERS if all(agree[p](r[a], r[b]) for (a, b), p in zip(PAIRS, preference, strict=True))]
    assert len(found) <= 1
    return found[0] if found else None


def finegrained_by_hand(records: list[dict]) -> dict:
    counts = Counter()
    for record in records:
        ranks = preorder_by_search(record["preference"])
        if ranks is None:
            counts["pairs"] += 6
            counts["tied pairs"] += record["preference"].count(0)
            counts["pairs with a tie"] += record["preference"].count(0)
        else:
            counts["4-way"] += 1
            tied = sum(1 for a, b in PAIRS if ranks[a] == ranks[b])
            counts["tied pairs"] += tied
            counts["4-way with a tie"] += tied > 0
        counts["corrections"] += bool(record["feedback"]["corrected-prediction"].strip())
        counts["gold"] += bool(record["gold"].strip())
    return dict(counts)


def test_the_finegrained_feedback_imports_with_exact_counts(db, shared_data):
    path = shared_data / FINEGRAINED
    assert finegrained_by_hand(json.loads(path.read_text())) == {
        "4-way": 478, "4-way with a tie": 180, "pairs": 132, "pairs with a tie": 60, "tied pairs": 384,
        "corrections": 487, "gold": 500}
    project = make_project("qa", k=4)
    report = import_file(project=project, path=path, fmt="finegrained")
    assert report == {
        "format": "finegrained", "source": "finegrained-rlhf", "records": 500,
        "created": {"prompts": 500, "demonstrations": 487 + 500, "rankings": 478 + 132, "candidates": 4 * 500},
        "duplicates": {"prompts": 0, "demonstrations": 0, "rankings": 0},
        "rankings_by_k": {"2": 132, "4": 478},
        "ties": {"rankings": 180 + 60, "pairs": 384},
        "left_out": {"no corrected prediction": 13},
    }
    assert Ranking.objects.count() == 610 and RankingEntry.objects.count() == 478 * 4 + 132 * 2
    assert Demonstration.objects.filter(author__username="finegrained-rlhf-import.asqa-gold").count() == 500
    # The 22 records whose judgments are no total preorder keep all 6 judgments as pairs.
    assert Prompt.objects.filter(tasks__kind=TaskKind.RANKING).distinct().count() == 500

    before = database_counts()
    again = import_file(project=project, path=path, fmt="finegrained")
    assert database_counts() == before and again["created"] == NOTHING_NEW
    assert again["duplicates"] == {"prompts": 500, "demonstrations": 987, "rankings": 610}


def test_mutated_finegrained_feedback_is_refused_at_the_elements_first_line(db, shared_data, tmp_path):
    records = json.loads((shared_data / FINEGRAINED).read_text())
    records[99]["preference"] = [1, 1, 1]
    records[250]["prediction 3"] = 42
    text = json.dumps(records, indent=2)
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    assert len(starts) == 500
    path = tmp_path / "dev_feedback.json"
    path.write_text(text)
    before = database_counts()
    with pytest.raises(ValidationError) as err:
        import_file(project=make_project("qa", k=4), path=path, fmt="finegrained")
    assert format_errors(err.value.detail) == [
        f"line {starts[99]}: 'preference' must hold 6 judgments, each 0, 1 or 2 (1v2, 1v3, 1v4, 2v3, 2v4, 3v4)",
        f"line {starts[250]}: 'prediction 3' must be a string",
    ]
    assert database_counts() == before


# --- HH-RLHF -----------------------------------------------------------------------------------------


def hh_by_hand(path) -> dict:
    """Usable pairs, distinct prompts and what is left out, cutting each pair at its shared prefix."""
    counts, prompts = Counter(), set()
    with gzip.open(path, "rt") as lines:
        for line in lines:
            record = json.loads(line)
            shared = os.path.commonprefix([record["chosen"], record["rejected"]])
            cut = shared.rfind("\n\nAssistant:") + len("\n\nAssistant:")
            chosen, rejected = record["chosen"][cut:].strip(), record["rejected"][cut:].strip()
            if not chosen or not rejected:
                counts["empty"] += 1
            elif chosen == rejected:
                counts["identical"] += 1
            else:
                counts["pairs"] += 1
                prompts.add(record["chosen"][:cut])
    return {**counts, "prompts": len(prompts)}


def test_hh_rlhf_helpful_base_imports_with_exact_counts(db, shared_data):
    path = shared_data / HELPFUL
    assert hh_by_hand(path) == {"pairs": 2348, "prompts": 2348, "empty": 4, "identical": 2}
    report = import_file(project=make_project("hh", k=2, demonstrations_enabled=False), path=path, fmt="hh-rlhf")
    assert report == {
        "format": "hh-rlhf", "source": "hh-rlhf", "records": 2354,
        "created": {"prompts": 2348, "demonstrations": 0, "rankings": 2348, "candidates": 2 * 2348},
        "duplicates": {"prompts": 0, "demonstrations": 0, "rankings": 0},
        "rankings_by_k": {"2": 2348}, "ties": {"rankings": 0, "pairs": 0},
        "left_out": {"empty response": 4, "identical responses in one ranking": 2},
    }
    assert Ranking.objects.filter(labeler__username="hh-rlhf-import").count() == 2348
    assert RankingEntry.objects.filter(rank=1).count() == RankingEntry.objects.filter(rank=2).count() == 2348
