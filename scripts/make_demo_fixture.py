"""Cut the demo fixture from the public HH-RLHF data in ../shared/data (run once; the output ships in
the repo so the demo never reads ../shared at run time).

    .venv/bin/python scripts/make_demo_fixture.py [--count 300]

The fixture holds import items (see annotation/formats.py): single- and multi-turn prompts from
helpful-base's test split, each with the human-preferred and the rejected response as candidates.
HH-RLHF is MIT-licensed, (c) 2022 Anthropic; see annotation/fixtures/demo/LICENSE-hh-rlhf.
It also cuts every group of exactly 4 human-ranked assistant replies from the OpenAssistant sample
(Apache-2.0, LAION-AI/Open-Assistant; see LICENSE-oasst) for a k=4 demo project.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annotation.formats import hh_pair_to_item  # noqa: E402


def oasst_groups(tree: dict, k: int):
    """(conversation, [replies best first]) for every group of exactly k human-ranked assistant replies."""

    def walk(message: dict, path: list[dict]):
        turn = {"role": "user" if message["role"] == "prompter" else "assistant", "content": message["text"]}
        conversation = path + [turn]
        ranked = [r for r in message.get("replies", []) if r["role"] == "assistant" and "rank" in r
                  and not r.get("synthetic") and not r.get("deleted")]
        if message["role"] == "prompter" and len(ranked) == k and not message.get("synthetic"):
            yield conversation, [r["text"] for r in sorted(ranked, key=lambda r: r["rank"])]
        for reply in message.get("replies", []):
            yield from walk(reply, conversation)

    yield from walk(tree["prompt"], [])


def write_oasst(source: Path, out: Path, k: int) -> int:
    written = 0
    with source.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            for messages, replies in oasst_groups(json.loads(line), k):
                item = {"messages": messages, "language": "en", "tags": ["open-assistant", f"k={k}"],
                        "candidates": [{"text": text} for text in replies]}
                dst.write(json.dumps(item, ensure_ascii=False) + "\n")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/hh-rlhf/helpful-base/test.jsonl.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "annotation/fixtures/demo/hh_rlhf_helpful.jsonl")
    parser.add_argument("--oasst", type=Path, default=ROOT.parent / "shared/data/open-assistant/en_100_tree.jsonl")
    parser.add_argument("--oasst-out", type=Path, default=ROOT / "annotation/fixtures/demo/oasst_k4.jsonl")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=1200, help="skip long dialogues, for a calm demo")
    args = parser.parse_args()
    print(f"wrote {write_oasst(args.oasst, args.oasst_out, k=4)} OpenAssistant k=4 groups to {args.oasst_out}")
    written = 0
    with gzip.open(args.source, "rt", encoding="utf-8") as src, args.out.open("w", encoding="utf-8") as out:
        for line in src:
            item = hh_pair_to_item(json.loads(line), subset="helpful-base")
            if item is None or len(json.dumps(item)) > args.max_chars:
                continue
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            written += 1
            if written == args.count:
                break
    print(f"wrote {written} items to {args.out}")


if __name__ == "__main__":
    main()
