"""Converters from the public data in ../shared/data to the contracts."""
from __future__ import annotations

from collections import Counter

from training import sources


def test_hh_split_uses_the_common_prefix_not_the_last_marker():
    chosen = "\n\nHuman: Say it\n\nAssistant: I quote \n\nAssistant: inside"
    rejected = "\n\nHuman: Say it\n\nAssistant: No"
    prompt, good, bad = sources.split_hh_pair(chosen, rejected)
    assert prompt == "\n\nHuman: Say it\n\nAssistant:"
    assert (good, bad) == ("I quote \n\nAssistant: inside", "No")
    assert sources.hh_messages(prompt) == [{"role": "user", "content": "Say it"}]


def test_hh_rlhf_files_become_pairs_and_unusable_pairs_are_counted(shared_data):
    skipped = Counter()
    helpful = list(sources.hh_rankings(shared_data / "hh-rlhf/helpful-base/test.jsonl.gz", skipped))
    # 2,354 pairs: 2 identical, 4 with an empty rejected response (see ../shared/data/README.md)
    assert len(helpful) + sum(skipped.values()) == 2354
    assert skipped == Counter({"empty response": 4, "identical responses": 2})
    assert all(e.ranks == [1, 2] and e.prompt[-1]["role"] == "user" for e in helpful)
    assert helpful[0].id == "helpful-base:1"


def test_openassistant_trees_give_k_way_groups_up_to_nine(shared_data):
    groups = list(sources.oasst_rankings(shared_data / "open-assistant/en_100_tree.jsonl"))
    sizes = Counter(e.k for e in groups)
    assert sizes == Counter({2: 57, 3: 117, 4: 27, 5: 3, 6: 6, 8: 1, 9: 1})  # 212 groups, as documented
    assert all(sorted(set(e.ranks)) == list(range(1, max(e.ranks) + 1)) for e in groups)
    demos = list(sources.oasst_demonstrations(shared_data / "open-assistant/en_100_tree.jsonl"))
    assert len(demos) == 670 - 0  # the human-written assistant replies
    assert all(d.prompt[-1]["role"] == "user" for d in demos)
