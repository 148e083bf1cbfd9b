"""annotation.imports: every format on small hand-written files. What each becomes (prompts, labels and
their source), what is left out and why, duplicates on a second import, and bad files that write nothing."""
from __future__ import annotations

import gzip
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.exceptions import ValidationError

from annotation.importing import format_errors
from annotation.imports.importer import import_file
from annotation.imports.readers import preorder_ranks
from annotation.models import (
    Candidate,
    Demonstration,
    Membership,
    Prompt,
    Ranking,
    RankingEntry,
    Role,
    Task,
    TaskKind,
    TaskSlot,
)
from tests.factories import make_project

User = get_user_model()


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def database_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (
        Prompt, Task, TaskSlot, Candidate, Ranking, RankingEntry, Demonstration, User, Membership)}


def ranks_by_text(ranking: Ranking) -> dict[str, int]:
    return {e.candidate.text: e.rank for e in ranking.entries.select_related("candidate")}


def rejected(project, path, fmt, **kwargs) -> list[str]:
    before = database_counts()
    with pytest.raises(ValidationError) as err:
        import_file(project=project, path=path, fmt=fmt, **kwargs)
    assert database_counts() == before
    return format_errors(err.value.detail)


# --- The platform's items and plain prompts --------------------------------------------------------


def test_items_make_ranking_tasks_for_the_labelers_not_labels(project_a, tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [
        {"text": "Name a cat", "tags": ["pets"], "candidates": ["Miso", "Tofu", "Bob", "Cleo"]},
        {"messages": [{"role": "user", "content": "Hi"}], "language": "de"},
    ])
    report = import_file(project=project_a, path=path, fmt="items")
    assert report["created"] == {"prompts": 2, "demonstrations": 0, "rankings": 0, "candidates": 4}
    task = Prompt.objects.get(text="Name a cat").tasks.get(kind=TaskKind.RANKING)
    assert task.status == Task.Status.OPEN and task.slots.count() == project_a.overlap
    assert not Ranking.objects.exists() and report["source"] == ""
    assert Prompt.objects.get(language="de").messages == [{"role": "user", "content": "Hi"}]


def test_items_with_the_wrong_k_are_reported_by_line(project_a, tmp_path):
    path = write_jsonl(tmp_path / "items.jsonl", [{"text": "ok"}, {"text": "x", "candidates": ["a", "b"]}])
    assert rejected(project_a, path, "items") == [
        "line 2: candidates: a ranking task in this project needs exactly k=4 candidates"]


def test_prompts_jsonl_takes_prompt_text_or_messages(project_a, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "The sky is"},
        {"prompt": [{"role": "user", "content": "What color is the sky?"}], "tags": ["sky"]},
        {"text": "Plain text"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    ])
    report = import_file(project=project_a, path=path, fmt="prompts-jsonl")
    assert report["created"]["prompts"] == 4 and report["records"] == 4
    assert Prompt.objects.get(tags=["sky"]).messages == [{"role": "user", "content": "What color is the sky?"}]
    assert not Candidate.objects.exists()


def test_prompts_jsonl_refuses_candidates_and_ambiguous_prompts(project_a, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "fine"},
        {"prompt": "x", "candidates": ["a"]},
        {"prompt": "x", "text": "y"},
        {"prompt": 7},
        {"messages": [{"role": "assistant", "content": "I start"}]},
    ])
    assert rejected(project_a, path, "prompts-jsonl") == [
        "line 2: a prompts file holds no candidates: use the items format",
        "line 3: give the prompt as exactly one of 'prompt', 'text' or 'messages'",
        "line 4: 'prompt' must be a string",
        "line 5: messages: the last turn must be the user's, whom the response answers",
    ]


def test_prompts_csv_reads_quoted_lines_and_tags(project_a, tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('prompt,tags,language,notes\n"A question\nover two lines",\"a, b\",en,x\nSecond,,fr,\n')
    report = import_file(project=project_a, path=path, fmt="prompts-csv")
    assert report["created"]["prompts"] == 2
    first = Prompt.objects.get(tags=["a", "b"])
    assert first.text == "A question\nover two lines"
    assert Prompt.objects.get(language="fr").text == "Second"


def test_prompts_csv_reports_a_row_on_the_line_where_it_starts(project_a, tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('Text,language\n"two\nlines",en\n\n"",en\nok,a-language-name-far-too-long\nx,en,extra\n')
    assert rejected(project_a, path, "prompts-csv") == [
        "line 5: text: give the prompt as text or as messages",
        "line 6: language: Ensure this field has no more than 16 characters.",
        "line 7: more fields than the header has columns",
    ]
    path.write_text("question\nwhat?\n")
    assert rejected(project_a, path, "prompts-csv") == ["line 1: the header needs a 'prompt' or 'text' column"]


# --- Pairwise preferences (TRL, HH-RLHF) -----------------------------------------------------------

SKY = [{"role": "user", "content": "What color is the sky?"}]


def test_trl_pairwise_standard_and_conversational_records_are_rankings_by_the_source(project_a, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score_chosen": 9.0},
        {"prompt": SKY, "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]},
        {"chosen": SKY + [{"role": "assistant", "content": "It is blue."}],  # implicit prompt: the shared turns
         "rejected": SKY + [{"role": "assistant", "content": "It is green."}]},
    ])
    report = import_file(project=project_a, path=path, fmt="trl-pairwise", source="ultrafeedback")
    assert report["created"] == {"prompts": 2, "demonstrations": 0, "rankings": 3, "candidates": 6}
    assert report["rankings_by_k"] == {"2": 3} and report["source"] == "ultrafeedback"
    labeler = User.objects.get(username="ultrafeedback-import")
    assert not labeler.is_active
    assert Membership.objects.get(user=labeler, project=project_a).role == Role.LABELER
    sky = Prompt.objects.get(messages=SKY)
    rankings = Ranking.objects.filter(task__prompt=sky, labeler=labeler).order_by("id")
    assert [ranks_by_text(r) for r in rankings] == [{"Blue.": 1, "Green.": 2}, {"It is blue.": 1, "It is green.": 2}]
    assert ranks_by_text(Ranking.objects.get(task__prompt__text="The sky is")) == {"blue.": 1, "green.": 2}
    # The label's task holds only the label: complete, never offered to the labelers.
    task = Ranking.objects.first().task
    assert (task.status, task.target_overlap, task.done_count) == (Task.Status.COMPLETE, 1, 1)


def test_a_second_pair_for_the_same_prompt_is_a_new_ranking_not_a_duplicate(project_a, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Hi!"},
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},  # the first pair again
        {"prompt": "Say hi", "chosen": "Same", "rejected": "Same"},
        {"prompt": "Say hi", "chosen": "", "rejected": "Something"},
    ])
    report = import_file(project=project_a, path=path, fmt="trl-pairwise")
    assert report["created"] == {"prompts": 1, "demonstrations": 0, "rankings": 2, "candidates": 3}
    assert report["duplicates"] == {"prompts": 0, "demonstrations": 0, "rankings": 1}
    assert report["left_out"] == {"empty response": 1, "identical responses in one ranking": 1}
    hi = Candidate.objects.get(text="Hi!")
    assert sorted(RankingEntry.objects.filter(candidate=hi).values_list("rank", flat=True)) == [1, 2]


def test_trl_pairwise_names_what_is_wrong_on_each_line(project_a, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "ok", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a"},
        {"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
        {"prompt": SKY, "chosen": [{"role": "user", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
        {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
        "[1, 2",
        '{"prompt": "unterminated',
    ])
    assert rejected(project_a, path, "trl-pairwise") == [
        "line 2: 'rejected' is missing",
        "line 3: 'rejected' must be of the same kind as 'chosen' (both strings or both messages)",
        "line 4: 'chosen' must hold exactly one assistant message after the prompt",
        "line 5: 'chosen' and 'rejected' share no prompt turns and no 'prompt' is given",
        "line 6: not valid JSON: Expecting ',' delimiter at column 6",
        "line 7: not valid JSON: Unterminated string at column 12",
    ]


def test_trl_messages_make_the_last_assistant_turn_a_demonstration(project_a, tmp_path):
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Take care.", "name": "bot"}]
    blank = conversation[:2] + [{"role": "assistant", "content": " "}]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": conversation}, {"messages": blank}])
    report = import_file(project=project_a, path=path, fmt="trl-messages")
    assert report["created"] == {"prompts": 1, "demonstrations": 1, "rankings": 0, "candidates": 0}
    assert report["left_out"] == {"empty response": 1}
    demonstration = Demonstration.objects.get()
    assert demonstration.text == "Take care." and demonstration.author.username == "trl-import"
    assert demonstration.prompt.messages == conversation[:4]
    assert demonstration.task.status == Task.Status.COMPLETE
    # The prompt also gets the project's own demonstration task, open to the labelers.
    assert demonstration.prompt.tasks.filter(kind=TaskKind.DEMONSTRATION, status=Task.Status.OPEN).count() == 1


def test_trl_messages_must_end_with_the_assistant(project_a, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": SKY}, {"messages": "hi"},
                                                {"messages": [{"role": "user", "content": 3}]}])
    assert rejected(project_a, path, "trl-messages") == [
        "line 1: 'messages' must end with the assistant's turn after at least one other turn",
        "line 2: 'messages' must be a list of messages",
        "line 3: 'messages' turn 0 needs a string 'role' and a string 'content'",
    ]


def test_hh_rlhf_pairs_are_rankings_by_the_hh_importer(db, tmp_path):
    project = make_project("pairs", k=2)
    folder = tmp_path / "helpful-base"
    folder.mkdir()
    dialogue = "\n\nHuman: Hi there\n\nAssistant:"
    path = folder / "test.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write(json.dumps({"chosen": dialogue + " Hello!", "rejected": dialogue + " What?"}) + "\n")
        out.write(json.dumps({"chosen": dialogue + " Same", "rejected": dialogue + " Same"}) + "\n")
    report = import_file(project=project, path=path, fmt="hh-rlhf")
    assert report["created"]["rankings"] == 1 and report["left_out"] == {"identical responses in one ranking": 1}
    ranking = Ranking.objects.get()
    assert ranking.labeler.username == "hh-rlhf-import"  # the user seed_demo imports HH labels as
    assert ranks_by_text(ranking) == {"Hello!": 1, "What?": 2}
    assert ranking.task.prompt.tags == ["hh-rlhf", "helpful-base"]


# --- FineGrainedRLHF --------------------------------------------------------------------------------


@pytest.mark.parametrize("preference, ranks", [
    ([1, 1, 1, 1, 1, 1], [1, 2, 3, 4]),     # 1 > 2 > 3 > 4
    ([2, 2, 2, 2, 2, 2], [4, 3, 2, 1]),
    ([0, 1, 1, 1, 1, 0], [1, 1, 2, 2]),     # 1 = 2 > 3 = 4
    ([0, 0, 0, 0, 0, 0], [1, 1, 1, 1]),
    ([1, 1, 0, 0, 2, 2], [1, 2, 2, 1]),     # 1 = 4 > 2 = 3
    ([1, 2, 1, 1, 1, 1], None),             # 1 > 2 > 3 > 1: a cycle
    ([0, 1, 1, 0, 1, 1], None),             # 1 = 2 and 2 = 3, but 1 > 3: ties that do not chain
    ([1, 1, 1, 0, 1, 0], None),             # 2 = 3 and 3 = 4, but 2 > 4
])
def test_pairwise_judgments_form_a_total_preorder_or_none(preference, ranks):
    assert preorder_ranks(preference) == ranks


def finegrained_record(question: str, preference: list[int], **extra) -> dict:
    return {"question": question, "passages": [["Title", "First sentence.", "Second."]], "gold": f"Gold for {question}",
            **{f"prediction {i}": f"Answer {i} to {question}" for i in range(1, 5)},
            "feedback": {"errors": [], "missing-info": [], "corrected-prediction": f"Fixed answer to {question}"},
            "preference": preference, **extra}


def test_finegrained_consistent_judgments_are_one_4_way_ranking_and_others_six_pairs(project_a, tmp_path):
    path = tmp_path / "dev_feedback.json"
    path.write_text(json.dumps([finegrained_record("q1", [0, 1, 1, 1, 1, 0]),
                                finegrained_record("q2", [1, 2, 1, 0, 1, 1])], indent=2))
    report = import_file(project=project_a, path=path, fmt="finegrained")
    assert report["created"] == {"prompts": 2, "demonstrations": 4, "rankings": 7, "candidates": 8}
    assert report["rankings_by_k"] == {"2": 6, "4": 1}
    assert report["ties"] == {"rankings": 2, "pairs": 3}  # q1: 1=2 and 3=4; q2: the tied pair 2v3
    q1 = Ranking.objects.get(task__prompt__text__startswith="q1")
    assert ranks_by_text(q1) == {"Answer 1 to q1": 1, "Answer 2 to q1": 1, "Answer 3 to q1": 2, "Answer 4 to q1": 2}
    q2 = Ranking.objects.filter(task__prompt__text__startswith="q2")
    assert sorted(tuple(sorted(ranks_by_text(r).items())) for r in q2)[:2] == [
        (("Answer 1 to q2", 1), ("Answer 2 to q2", 2)), (("Answer 1 to q2", 1), ("Answer 4 to q2", 2))]
    assert Candidate.objects.filter(prompt__text__startswith="q2").count() == 4  # shared by the 6 pairs
    prompt = Prompt.objects.get(text__startswith="q1")
    assert prompt.text == "q1\n\nPassages:\n\n[1] Title\nFirst sentence. Second."
    assert dict(Demonstration.objects.filter(prompt=prompt).values_list("author__username", "text")) == {
        "finegrained-rlhf-import": "Fixed answer to q1", "finegrained-rlhf-import.asqa-gold": "Gold for q1"}


def test_finegrained_errors_name_the_line_where_the_element_starts(project_a, tmp_path):
    records = [finegrained_record("q1", [1] * 6), finegrained_record("q2", [1, 1, 3, 1, 1, 1]),
               finegrained_record("q3", [1] * 5)]
    text = json.dumps(records, indent=2)
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    path = tmp_path / "dev_feedback.json"
    path.write_text(text)
    message = "'preference' must hold 6 judgments, each 0, 1 or 2 (1v2, 1v3, 1v4, 2v3, 2v4, 3v4)"
    assert rejected(project_a, path, "finegrained") == [f"line {starts[1]}: {message}", f"line {starts[2]}: {message}"]
    path.write_text(text[:-30])  # cut short: the last element never ends
    last = len(text[:-30].splitlines())
    assert rejected(project_a, path, "finegrained")[-1].startswith(
        f"line {starts[2]}: not valid JSON: Expecting ',' delimiter at line {last}")


def test_finegrained_without_a_correction_leaves_only_the_correction_out(project_a, tmp_path):
    record = finegrained_record("q", [1] * 6)
    record["feedback"]["corrected-prediction"] = ""
    path = write_jsonl(tmp_path / "feedback.jsonl", [record])  # JSON lines work too
    report = import_file(project=project_a, path=path, fmt="finegrained")
    assert report["left_out"] == {"no corrected prediction": 1}
    assert report["created"]["demonstrations"] == 1 and report["created"]["rankings"] == 1


# --- OpenAssistant trees -----------------------------------------------------------------------------


def message(mid: str, role: str, text: str, *replies, **fields) -> dict:
    return {"message_id": mid, "role": role, "text": text, "lang": "en", "deleted": False, "synthetic": False,
            "review_result": True, "replies": list(replies), **fields}


def test_oasst_prompts_keep_their_path_and_human_replies_become_demonstrations(project_a, tmp_path):
    tree = message(
        "p1", "prompter", "Explain tides.",
        message("a1", "assistant", "The moon pulls the sea.", message("p2", "prompter", "And the sun?"),
                rank=0, user_id="u-1"),
        message("a2", "assistant", "Gravity.", rank=2, user_id="u-2"),
        message("a3", "assistant", "Magic.", rank=1, synthetic=True, model_name="chip20b"),
        message("a4", "assistant", "Unranked but human."),
        message("a5", "assistant", "Removed.", message("p3", "prompter", "Gone too"), deleted=True, rank=3),
    )
    path = write_jsonl(tmp_path / "trees.jsonl", [{"message_tree_id": "t1", "tree_state": "ready_for_export",
                                                  "prompt": tree}])
    report = import_file(project=project_a, path=path, fmt="oasst")
    assert report["created"] == {"prompts": 2, "demonstrations": 3, "rankings": 1, "candidates": 3}
    assert report["left_out"] == {"deleted message (with its replies)": 2, "synthetic reply (not a demonstration)": 1,
                                  "unranked reply beside ranked ones": 1}
    assert [p.messages for p in Prompt.objects.order_by("id")][1] == [{"role": "user", "content": "Explain tides."},
                                  {"role": "assistant", "content": "The moon pulls the sea."},
                                  {"role": "user", "content": "And the sun?"}]
    ranking = Ranking.objects.get()
    assert ranking.labeler.username == "oasst-import"
    assert ranks_by_text(ranking) == {"The moon pulls the sea.": 1, "Magic.": 2, "Gravity.": 3}
    assert Candidate.objects.get(text="Magic.").origin == Candidate.Origin.IMPORTED  # written by a model
    assert Candidate.objects.get(text="Gravity.").origin == Candidate.Origin.HUMAN
    authors = dict(Demonstration.objects.values_list("text", "author__username"))
    assert authors == {"The moon pulls the sea.": "oasst-import.u-1", "Gravity.": "oasst-import.u-2",
                       "Unranked but human.": "oasst-import"}


def test_an_oasst_tree_with_a_broken_message_is_reported_with_its_path(project_a, tmp_path):
    good = message("p1", "prompter", "Fine")
    broken = message("p2", "prompter", "Broken", message("a1", "assistant", "ok", message("x", "robot", "beep")))
    path = write_jsonl(tmp_path / "trees.jsonl", [{"prompt": good}, {"prompt": broken}, {"tree": {}}])
    assert rejected(project_a, path, "oasst") == [
        "line 2: prompt.replies.0.replies.0: role must be 'prompter' or 'assistant'",
        "line 3: 'prompt' is missing",
    ]


# --- The import as a whole ---------------------------------------------------------------------------


def test_a_second_import_creates_nothing_and_counts_duplicates(project_a, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": SKY + [{"role": "assistant", "content": "Blue."}]},
        {"messages": SKY + [{"role": "assistant", "content": "Azure."}]},
    ])
    first = import_file(project=project_a, path=path, fmt="trl-messages")
    before = database_counts()
    again = import_file(project=project_a, path=path, fmt="trl-messages")
    assert database_counts() == before
    assert first["created"] == {"prompts": 1, "demonstrations": 2, "rankings": 0, "candidates": 0}
    assert again["created"] == {"prompts": 0, "demonstrations": 0, "rankings": 0, "candidates": 0}
    assert again["duplicates"] == {"prompts": 1, "demonstrations": 2, "rankings": 0}


def test_the_same_labels_from_another_source_are_new_labels(project_a, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    import_file(project=project_a, path=path, fmt="trl-pairwise", source="team-a")
    report = import_file(project=project_a, path=path, fmt="trl-pairwise", source="team-b")
    assert report["created"] == {"prompts": 0, "demonstrations": 0, "rankings": 1, "candidates": 0}
    assert set(Ranking.objects.values_list("labeler__username", flat=True)) == {"team-a-import", "team-b-import"}


def test_labels_are_never_recorded_as_a_user_who_can_log_in(project_a, tmp_path):
    User.objects.create_user(username="mallory-import", password="pw")
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    errors = rejected(project_a, path, "trl-pairwise", source="mallory")
    assert errors == ["line 1: source: 'mallory-import' is a user who can log in; imported labels need a source of "
                      "their own (give another source)"]
    assert rejected(project_a, path, "trl-pairwise", source="Not A Name") == [
        "source: a source is 1–64 lowercase letters, digits, '.', '_' or '-'"]


def test_every_bad_line_is_reported_and_nothing_is_written(project_a, tmp_path):
    lines = [{"prompt": f"fine {i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    lines[1] = "{not json"
    lines[3] = {"prompt": "", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "pairs.jsonl", lines)
    assert rejected(project_a, path, "trl-pairwise") == [
        "line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2",
        "line 4: text: give the prompt as text or as messages",
    ]


def test_a_wholly_wrong_file_lists_its_first_thousand_bad_lines(project_a, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": 1}] * 1002)
    errors = rejected(project_a, path, "prompts-jsonl")
    assert len(errors) == 1001 and errors[999] == "line 1000: 'prompt' must be a string"
    assert errors[-1] == "file: 2 more bad lines are not listed"


def test_a_file_that_is_not_text_or_holds_nothing_is_refused(project_a, tmp_path):
    path = tmp_path / "blob.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert rejected(project_a, path, "items")[0].startswith("file: cannot read the file as UTF-8 text")
    path.write_text("\n\n")
    assert rejected(project_a, path, "items") == ["file: the file holds no records"]
    assert rejected(project_a, path, "xml") == ["format: unknown format 'xml'; use one of items, prompts-jsonl, "
                                                "prompts-csv, hh-rlhf, oasst, finegrained, trl-pairwise, trl-messages"]


def test_gzip_is_recognised_by_content_and_progress_is_reported(project_a, tmp_path):
    path = tmp_path / "prompts.data"
    with gzip.open(path, "wt") as out:
        out.write("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(3)))
    calls = []
    import_file(project=project_a, path=path, fmt="prompts-jsonl", on_progress=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and Prompt.objects.count() == 3


# --- manage.py import_data ----------------------------------------------------------------------------


def test_import_data_prints_the_report(project_a, tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                  {"prompt": "q", "chosen": "a", "rejected": "a"}])
    call_command("import_data", str(path), project=project_a.name, format="trl-pairwise", verbosity=0)
    out = capsys.readouterr().out
    assert "created 1 prompts, 0 demonstrations, 1 rankings (k=2: 1), 2 candidates" in out
    assert "left out: 1 × identical responses in one ranking" in out
    call_command("import_data", str(path), project=str(project_a.pk), format="trl-pairwise", as_json=True)
    assert json.loads(capsys.readouterr().out)["duplicates"] == {"prompts": 1, "demonstrations": 0, "rankings": 1}


def test_import_data_lists_the_bad_lines_and_imports_nothing(project_a, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, "oops"])
    with pytest.raises(CommandError, match=r"nothing was imported:\nline 2: not valid JSON"):
        call_command("import_data", str(path), project=project_a.name, format="trl-pairwise", verbosity=0)
    assert not Prompt.objects.exists()
    with pytest.raises(CommandError, match="no project"):
        call_command("import_data", str(path), project="nope", format="trl-pairwise", verbosity=0)
