"""One reader per import format: a file becomes a stream of entries, each with its line number.

- ``Record``: one prompt (an import item: ``text`` or ``messages``, ``language``, ``tags``, and, in the
  items format only, unlabeled ``candidates``) with the labels the source holds for it: written responses
  (demonstrations) and ranked responses (rankings).
- ``LeftOut``: something the source holds that cannot become a prompt or a label, with the reason.
- ``BadLine``: a record that is malformed; the import reports it and writes nothing.

Readers are pure Python (no Django, no database) and never hold more than one source record: JSONL and
CSV are read line by line; a file that is one JSON array (FineGrainedRLHF's) is read whole as text and
decoded element by element, each element keeping the line it starts on. Gzip is recognised by content.
The project's rules (k, message shape) are checked by the importer, not here.
"""
from __future__ import annotations

import csv
import gzip
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.sources import hh_messages, split_hh_pair

HUMAN, IMPORTED = "human", "imported"  # Candidate.Origin values: written by a person, or by a model
MAX_RESPONSES = 9  # the platform's largest k
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled", "red-team-attempts")


@dataclass
class Written:
    """A response written (or corrected) by a person: a demonstration of the record's prompt."""
    text: str
    author: str = ""  # who wrote it within the source, when the source says


@dataclass
class Ranked:
    """k distinct responses and their dense ranks (1 = best; ties share a rank)."""
    responses: list[str]
    ranks: list[int]
    origins: list[str] | None = None  # HUMAN or IMPORTED per response (default: all IMPORTED)
    author: str = ""

    @property
    def k(self) -> int:
        return len(self.responses)


@dataclass
class Record:
    line: int
    prompt: dict[str, Any]
    demonstrations: list[Written] = field(default_factory=list)
    rankings: list[Ranked] = field(default_factory=list)


@dataclass
class LeftOut:
    line: int
    reason: str


@dataclass
class BadLine:
    line: int
    errors: Any  # a list of messages, or {field: [messages]}


Entry = Record | LeftOut | BadLine
Reader = Callable[[Path, str], Iterator[Entry]]


class Malformed(ValueError):
    """A source record that does not have the format's shape (becomes a BadLine)."""


# --- Files ----------------------------------------------------------------------------------------


def open_text(path: Path, newline: str | None = None):
    """A text stream of the file, decompressed when it is gzip (by its magic bytes, not its name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def iter_json(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or a Malformed error) for every record: one per non-blank line of a
    JSONL file, or one per element of a file that is a single JSON array."""
    with open_text(path) as stream:
        first = ""
        while not first:
            chunk = stream.read(1)
            if not chunk:
                return
            first = chunk.strip()
        stream.seek(0)
        if first == "[":
            yield from _json_array(stream.read())
            return
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield number, Malformed(f"not valid JSON: {exc.msg.removesuffix(' starting at')} at column {exc.colno}")


def _json_array(text: str) -> Iterator[tuple[int, Any]]:
    """The elements of a JSON array, each with the line it starts on; a syntax error (reported on the line
    where its element starts) ends the file."""
    decoder = json.JSONDecoder()
    counted_to, line = 0, 1

    def line_at(pos: int) -> int:
        nonlocal counted_to, line
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_space(text.index("[") + 1)
    if text.startswith("]", pos):
        return
    while True:
        start = line_at(pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield start, Malformed(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
            return
        yield start, value
        pos = skip_space(pos)
        if text.startswith(",", pos):
            pos = skip_space(pos + 1)
            continue
        if text.startswith("]", pos) and not text[pos + 1:].strip():
            return
        yield line_at(pos), Malformed("not valid JSON: expected ',' or the end of the array")
        return


# --- Shared checks --------------------------------------------------------------------------------


def clean(text: str) -> str:
    """Response and prompt text as stored: stripped, and without NUL characters (PostgreSQL refuses
    them)."""
    return text.replace("\x00", "\ufffd").strip()


def _need(record: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(record, dict):
        raise Malformed("a record must be a JSON object")
    if key not in record:
        raise Malformed(f"'{key}' is missing")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Malformed(f"'{key}' must be {what}")
    return value


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    """A conversation reduced to {role, content} turns (extra keys such as TRL's "name" are dropped)."""
    if not isinstance(value, list) or not all(isinstance(turn, dict) for turn in value):
        raise Malformed(f"'{key}' must be a list of {{role, content}} messages")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise Malformed(f"'{key}' turn {i} needs a string 'role' and a string 'content'")
        turns.append({"role": turn["role"], "content": clean(turn["content"])})
    return turns


def dense_ranks(order: list[int], *, reverse: bool = False) -> list[int]:
    """1 = the smallest value (or the largest, with ``reverse``); equal values share a rank."""
    levels = {v: i + 1 for i, v in enumerate(sorted(set(order), reverse=reverse))}
    return [levels[v] for v in order]


def ranking(responses: list[str], ranks: list[int], *, origins: list[str] | None = None,
            author: str = "") -> Ranked | str:
    """A ranking of the responses, or the reason it cannot be one."""
    if any(not text for text in responses):
        return "empty response"
    if len(set(responses)) < len(responses):
        return "identical responses in one ranking"
    if len(responses) > MAX_RESPONSES:
        return f"more than {MAX_RESPONSES} responses in one ranking"
    return Ranked(responses, ranks, origins, author)


def _entries(line: int, value: Any, parse: Callable[[int, Any], Iterator[Record | LeftOut]]) -> Iterator[Entry]:
    """The entries of one source record, or one BadLine if any part of it is malformed."""
    try:
        entries = list(parse(line, value))
    except Malformed as exc:
        yield BadLine(line, [str(exc)])
        return
    yield from entries


def _from_json(path: Path, parse_record: Callable[[int, Any], Iterator[Record | LeftOut]]) -> Iterator[Entry]:
    for line, value in iter_json(path):
        if isinstance(value, Malformed):
            yield BadLine(line, [str(value)])
            continue
        yield from _entries(line, value, parse_record)


# --- Prompts and the platform's items -------------------------------------------------------------


def read_items(path: Path, source: str) -> Iterator[Entry]:
    """The platform's own JSONL: ``{"text" | "messages", "language", "tags", "candidates"}`` per line;
    candidates (exactly the project's k) make a ranking task for the labelers, not a label."""

    def parse(line: int, value: Any) -> Iterator[Record]:
        if not isinstance(value, dict):
            raise Malformed("a record must be a JSON object")
        yield Record(line, value)

    return _from_json(path, parse)


def _prompt_item(value: dict) -> dict[str, Any]:
    if "candidates" in value:
        raise Malformed("a prompts file holds no candidates: use the items format")
    given = [key for key in ("prompt", "text", "messages") if key in value]
    if len(given) != 1:
        raise Malformed("give the prompt as exactly one of 'prompt', 'text' or 'messages'")
    item = {key: value[key] for key in ("language", "tags") if key in value}
    prompt = value[given[0]]
    if isinstance(prompt, str) and given[0] != "messages":
        item["text"] = clean(prompt)
    elif isinstance(prompt, list) and given[0] != "text":
        item["messages"] = _messages(prompt, given[0])
    else:
        raise Malformed(f"'{given[0]}' must be {'a list of messages' if given[0] == 'messages' else 'a string'}")
    return item


def read_prompts_jsonl(path: Path, source: str) -> Iterator[Entry]:
    """Prompts without responses, one per line: ``{"prompt": str | messages}`` (TRL's prompt-only format),
    ``{"text": str}`` or ``{"messages": [...]}``, with optional ``language`` and ``tags``."""

    def parse(line: int, value: Any) -> Iterator[Record]:
        if not isinstance(value, dict):
            raise Malformed("a record must be a JSON object")
        yield Record(line, _prompt_item(value))

    return _from_json(path, parse)


def read_prompts_csv(path: Path, source: str) -> Iterator[Entry]:
    """Prompts from a CSV file with a header row: a ``prompt`` (or ``text``) column, optional ``language``
    and ``tags`` (comma-separated) columns; other columns are ignored. A quoted field may span lines; a
    row is reported on the line where it starts."""
    with open_text(path, newline="") as stream:
        rows = csv.reader(stream)
        try:
            header = [name.strip().lower() for name in next(rows, [])]
        except csv.Error as exc:
            yield BadLine(1, [f"not valid CSV: {exc}"])
            return
        column = next((name for name in ("prompt", "text") if name in header), None)
        if column is None:
            yield BadLine(1, ["the header needs a 'prompt' or 'text' column"])
            return
        read_to = rows.line_num
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                yield BadLine(read_to + 1, [f"not valid CSV: {exc}"])
                return
            line, read_to = read_to + 1, rows.line_num
            if not any(field.strip() for field in row):
                continue
            if len(row) > len(header):
                yield BadLine(line, ["more fields than the header has columns"])
                continue
            values = dict(zip(header, row, strict=False))
            item: dict[str, Any] = {"text": clean(values.get(column, ""))}
            if values.get("language", "").strip():
                item["language"] = values["language"].strip()
            if values.get("tags", "").strip():
                item["tags"] = [tag.strip() for tag in values["tags"].split(",") if tag.strip()]
            yield Record(line, item)


# --- Pairwise preferences: HH-RLHF and TRL --------------------------------------------------------


def read_hh_rlhf(path: Path, source: str) -> Iterator[Entry]:
    """Anthropic HH-RLHF ``{"chosen", "rejected"}`` whole dialogues: the shared dialogue is the prompt and
    the preference a k=2 ranking (chosen 1, rejected 2). Pairs with an empty or identical response are
    left out."""
    subset = path.parent.name if path.parent.name in HH_SUBSETS else ""
    tags = [source] + ([subset] if subset else [])

    def parse(line: int, value: Any) -> Iterator[Record | LeftOut]:
        chosen = _need(value, "chosen", str, "a string")
        rejected = _need(value, "rejected", str, "a string")
        try:
            prompt, good, bad = split_hh_pair(chosen, rejected)
        except ValueError as exc:
            raise Malformed(f"not an HH-RLHF pair: {exc}") from None
        messages = hh_messages(prompt)
        if not messages:
            yield LeftOut(line, "no user turn before the compared responses")
            return
        pair = ranking([clean(good), clean(bad)], [1, 2])
        if isinstance(pair, str):
            yield LeftOut(line, pair)
            return
        yield Record(line, {"messages": messages, "language": "en", "tags": tags}, rankings=[pair])

    return _from_json(path, parse)


def _trl_pair(value: Any) -> tuple[str | list[dict], str, str]:
    """(prompt, chosen, rejected) from TRL's preference format: standard (strings), conversational
    (lists of messages), or conversational with an implicit prompt (the turns both dialogues share)."""
    chosen = _need(value, "chosen", (str, list), "a string or a list of messages")
    rejected = _need(value, "rejected", (str, list), "a string or a list of messages")
    if not isinstance(rejected, type(chosen)):
        raise Malformed("'rejected' must be of the same kind as 'chosen' (both strings or both messages)")
    prompt = value.get("prompt")
    if isinstance(chosen, str):
        if not isinstance(prompt, str):
            raise Malformed("'prompt' must be a string when 'chosen' and 'rejected' are strings")
        return clean(prompt), clean(chosen), clean(rejected)
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if prompt is None:  # implicit prompt: the longest shared beginning of both conversations
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not prompt:
            raise Malformed("'chosen' and 'rejected' share no prompt turns and no 'prompt' is given")
    else:
        if not isinstance(prompt, list):
            raise Malformed("'prompt' must be a list of messages when 'chosen' and 'rejected' are messages")
        prompt = _messages(prompt, "prompt")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise Malformed(f"'{key}' must hold exactly one assistant message after the prompt")
    return prompt, chosen[0]["content"], rejected[0]["content"]


def read_trl_pairwise(path: Path, source: str) -> Iterator[Entry]:
    """TRL's preference format (``prompt``/``chosen``/``rejected``; strings or conversations, the prompt
    explicit or implicit): one k=2 ranking per record. Other columns (scores, ids) are ignored."""

    def parse(line: int, value: Any) -> Iterator[Record | LeftOut]:
        prompt, chosen, rejected = _trl_pair(value)
        pair = ranking([chosen, rejected], [1, 2])
        if isinstance(pair, str):
            yield LeftOut(line, pair)
            return
        item = {"text": prompt} if isinstance(prompt, str) else {"messages": prompt}
        yield Record(line, {**item, "tags": [source]}, rankings=[pair])

    return _from_json(path, parse)


def read_trl_messages(path: Path, source: str) -> Iterator[Entry]:
    """TRL's conversational language-modeling format ``{"messages": [...]}``: the last turn, the
    assistant's, is a demonstration of the turns before it."""

    def parse(line: int, value: Any) -> Iterator[Record | LeftOut]:
        turns = _messages(_need(value, "messages", list, "a list of messages"), "messages")
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise Malformed("'messages' must end with the assistant's turn after at least one other turn")
        if not turns[-1]["content"]:
            yield LeftOut(line, "empty response")
            return
        yield Record(line, {"messages": turns[:-1], "tags": [source]},
                     demonstrations=[Written(turns[-1]["content"])])

    return _from_json(path, parse)


# --- OpenAssistant message trees ------------------------------------------------------------------


def _oasst_message(message: Any, where: str) -> dict:
    if not isinstance(message, dict):
        raise Malformed(f"{where}: a message must be a JSON object")
    for key, kind in (("text", str), ("role", str)):
        if not isinstance(message.get(key), kind):
            raise Malformed(f"{where}: '{key}' must be a string")
    if message["role"] not in ("prompter", "assistant"):
        raise Malformed(f"{where}: role must be 'prompter' or 'assistant'")
    if not isinstance(message.get("replies", []), list):
        raise Malformed(f"{where}: 'replies' must be a list")
    rank = message.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise Malformed(f"{where}: 'rank' must be an integer")
    return message


def _dropped(message: dict) -> str:
    """Why a message and its whole subtree are left out ('' when it is kept)."""
    if message.get("deleted"):
        return "deleted message (with its replies)"
    if message.get("review_result") is False:
        return "message that failed review (with its replies)"
    if not clean(message["text"]):
        return "empty message (with its replies)"
    return ""


def _subtree_size(message: dict) -> int:
    return 1 + sum(_subtree_size(reply) for reply in message.get("replies", []) if isinstance(reply, dict))


def _oasst_prompt(line: int, node: dict, path: list[dict], source: str) -> Iterator[Record | LeftOut]:
    """The record of one prompter message: its conversation path, its human replies (demonstrations) and
    its ranked replies (a ranking, OA rank 0 = best)."""
    replies = [r for r in node.get("replies", []) if r["role"] == "assistant" and not _dropped(r)]
    demonstrations = []
    for reply in replies:
        if reply.get("synthetic"):
            yield LeftOut(line, "synthetic reply (not a demonstration)")
        else:
            demonstrations.append(Written(clean(reply["text"]), str(reply.get("user_id") or "")))
    ranked = [r for r in replies if r.get("rank") is not None]
    rankings = []
    if ranked:
        for _ in range(len(replies) - len(ranked)):
            yield LeftOut(line, "unranked reply beside ranked ones")
        if len(ranked) == 1:
            yield LeftOut(line, "a lone ranked reply (nothing to compare)")
        else:
            group = ranking([clean(r["text"]) for r in ranked], dense_ranks([r["rank"] for r in ranked]),
                            origins=[IMPORTED if r.get("synthetic") else HUMAN for r in ranked])
            if isinstance(group, str):
                yield LeftOut(line, f"ranked replies: {group}")
            else:
                rankings.append(group)
    language = node.get("lang") if isinstance(node.get("lang"), str) else "en"
    yield Record(line, {"messages": path, "language": language, "tags": [source]}, demonstrations, rankings)


def read_oasst(path: Path, source: str) -> Iterator[Entry]:
    """OpenAssistant tree exports ``{"message_tree_id", "tree_state", "prompt"}``, one tree per line.

    Every kept prompter message is a prompt whose messages are its conversation path. Its assistant
    replies written by people (``synthetic`` false) are demonstrations; its ranked replies, synthetic
    ones included (people ranked them), are one ranking with OA's ``rank`` (0 = best) made dense. A
    deleted message, one that failed review, or an empty one is left out with its whole subtree: the
    conversations beneath it would contain it. Replies without a rank stay out of their group's ranking.
    """

    def parse(line: int, tree: Any) -> Iterator[Record | LeftOut]:
        root = _oasst_message(_need(tree, "prompt", dict, "a message object"), "prompt")
        if root["role"] != "prompter":
            raise Malformed("prompt: the root message must be the prompter's")
        entries: list[Record | LeftOut] = []
        stack: list[tuple[dict, list[dict], str]] = [(root, [], "prompt")]
        while stack:
            node, history, where = stack.pop()
            for i, reply in enumerate(node.get("replies", [])):
                _oasst_message(reply, f"{where}.replies.{i}")
            reason = _dropped(node)
            if reason:
                entries.extend(LeftOut(line, reason) for _ in range(_subtree_size(node)))
                continue
            turn = {"role": "user" if node["role"] == "prompter" else "assistant", "content": clean(node["text"])}
            here = history + [turn]
            if node["role"] == "prompter":
                entries.extend(_oasst_prompt(line, node, here, source))
            stack.extend((reply, here, f"{where}.replies.{i}") for i, reply in reversed(list(
                enumerate(node.get("replies", [])))))
        yield from entries

    return _from_json(path, parse)


# --- FineGrainedRLHF qa-feedback ------------------------------------------------------------------

FG_PAIRS = list(itertools.combinations(range(4), 2))  # the order of "preference": 1v2, 1v3, 1v4, 2v3, 2v4, 3v4


def preorder_ranks(preferences: list[int]) -> list[int] | None:
    """Dense ranks of the 4 answers (1 = best, ties share a rank) that reproduce every pairwise judgment
    (1: the first of the pair is preferred, 2: the second, 0: neither), or None when no total preorder
    does. If one exists, ranking by the number of answers each beats is it; so checking that ranking
    against every judgment decides."""
    wins = [0] * 4
    for (a, b), p in zip(FG_PAIRS, preferences, strict=True):
        if p == 1:
            wins[a] += 1
        elif p == 2:
            wins[b] += 1
    ranks = dense_ranks(wins, reverse=True)
    agrees = {0: lambda a, b: ranks[a] == ranks[b], 1: lambda a, b: ranks[a] < ranks[b],
              2: lambda a, b: ranks[a] > ranks[b]}
    return ranks if all(agrees[p](a, b) for (a, b), p in zip(FG_PAIRS, preferences, strict=True)) else None


def _fg_prompt(question: str, passages: list) -> str:
    """The question, then the Wikipedia passages the answers were written from (title, then sentences)."""
    parts = [clean(question)]
    for i, passage in enumerate(passages, start=1):
        if not isinstance(passage, list) or not passage or not all(isinstance(s, str) for s in passage):
            raise Malformed(f"passage {i} must be a list of strings: [title, sentence, ...]")
        parts.append(f"[{i}] {clean(passage[0])}\n{clean(' '.join(passage[1:]))}")
    return "\n\n".join(parts[:1] + (["Passages:"] if passages else []) + parts[1:])


def read_finegrained(path: Path, source: str) -> Iterator[Entry]:
    """FineGrainedRLHF qa-feedback records (one JSON array, or JSONL): the question and its passages are
    the prompt; ``prediction 1``–``4`` with the 6 pairwise ``preference`` judgments become one k=4
    ranking (ties allowed) when the judgments form a total preorder, else 6 pairwise rankings (a tied
    pair is a k=2 ranking with one shared rank). The human ``corrected-prediction`` and ASQA's ``gold``
    answer (author "asqa-gold") are demonstrations."""

    def parse(line: int, value: Any) -> Iterator[Record | LeftOut]:
        question = _need(value, "question", str, "a string")
        passages = _need(value, "passages", list, "a list of passages")
        answers = [clean(_need(value, f"prediction {i}", str, "a string")) for i in range(1, 5)]
        preferences = _need(value, "preference", list, "a list of 6 judgments")
        if len(preferences) != 6 or any(p not in (0, 1, 2) or isinstance(p, bool) for p in preferences):
            raise Malformed("'preference' must hold 6 judgments, each 0, 1 or 2 (1v2, 1v3, 1v4, 2v3, 2v4, 3v4)")
        feedback = value.get("feedback") or {}
        if not isinstance(feedback, dict):
            raise Malformed("'feedback' must be an object")
        correction, gold = feedback.get("corrected-prediction") or "", value.get("gold") or ""
        if not isinstance(correction, str) or not isinstance(gold, str):
            raise Malformed("'feedback.corrected-prediction' and 'gold' must be strings")
        demonstrations = [Written(clean(correction))] if clean(correction) else []
        if not demonstrations:
            yield LeftOut(line, "no corrected prediction")
        if clean(gold):
            demonstrations.append(Written(clean(gold), "asqa-gold"))
        ranks = preorder_ranks(preferences)
        if ranks is not None:
            groups = [ranking(answers, ranks)]
        else:
            groups = [ranking([answers[a], answers[b]], {0: [1, 1], 1: [1, 2], 2: [2, 1]}[p])
                      for (a, b), p in zip(FG_PAIRS, preferences, strict=True)]
        yield from (LeftOut(line, f"predictions: {group}") for group in groups if isinstance(group, str))
        yield Record(line, {"text": _fg_prompt(question, passages), "language": "en", "tags": [source]},
                     demonstrations, [group for group in groups if not isinstance(group, str)])

    return _from_json(path, parse)


READERS: dict[str, Reader] = {
    "items": read_items,
    "prompts-jsonl": read_prompts_jsonl,
    "prompts-csv": read_prompts_csv,
    "hh-rlhf": read_hh_rlhf,
    "oasst": read_oasst,
    "finegrained": read_finegrained,
    "trl-pairwise": read_trl_pairwise,
    "trl-messages": read_trl_messages,
}
FORMATS = tuple(READERS)
# The label source recorded when the caller names none (formats without labels need none); a source names
# the inactive user "<source>-import" who submits its labels.
SOURCE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
DEFAULT_SOURCES = {"hh-rlhf": "hh-rlhf", "oasst": "oasst", "finegrained": "finegrained-rlhf",
                   "trl-pairwise": "trl", "trl-messages": "trl"}
# One line per format for the upload form (the project page): what a record looks like, and what it becomes.
HINTS = {
    "items": 'The platform\'s own JSONL: {"text"} or {"messages"}, optional language and tags, and optionally '
             'k unlabeled candidates (a ranking task for the labelers).',
    "prompts-jsonl": 'Prompts only, one per line: {"prompt": text or messages} (TRL\'s prompt-only format), '
                     '{"text"} or {"messages"}.',
    "prompts-csv": "Prompts only: CSV with a header row and a prompt (or text) column; optional language and "
                   "tags (comma-separated) columns.",
    "hh-rlhf": 'Anthropic HH-RLHF {"chosen", "rejected"} dialogues: the shared turns are the prompt, each pair '
               "a k=2 ranking.",
    "oasst": "OpenAssistant message trees, one per line: prompts keep their conversation, human replies become "
             "demonstrations, ranked sibling replies k-way rankings.",
    "finegrained": "FineGrainedRLHF qa-feedback (a JSON array or JSONL): 4 answers with pairwise preferences "
                   "become one k=4 ranking, or pairwise rankings when the pairs contradict each other.",
    "trl-pairwise": 'TRL preference pairs {"prompt", "chosen", "rejected"} (text or conversations): a k=2 '
                    "ranking each.",
    "trl-messages": 'TRL conversations {"messages": [...]}: the last turn, the assistant\'s, is a demonstration '
                    "of the turns before it.",
}

