"""Cut the demo fixture from the public HH-RLHF data in ../shared/data (run once; the output ships in
the repo so the demo never reads ../shared at run time).

    .venv/bin/python scripts/make_demo_fixture.py [--count 300]

The fixture holds import items (see annotation/formats.py): single- and multi-turn prompts from
helpful-base's test split, each with the human-preferred and the rejected response as candidates.
HH-RLHF is MIT-licensed, (c) 2022 Anthropic; see annotation/fixtures/demo/LICENSE-hh-rlhf.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/hh-rlhf/helpful-base/test.jsonl.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "annotation/fixtures/demo/hh_rlhf_helpful.jsonl")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--max-chars", type=int, default=1200, help="skip long dialogues, for a calm demo")
    args = parser.parse_args()
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
