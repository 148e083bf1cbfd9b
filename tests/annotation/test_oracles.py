"""The built-in oracles and demonstrators that simulated labelers use."""
from __future__ import annotations

import pytest

from annotation.models import render_messages
from annotation.oracles import dense_ranks, polite_demonstrator, prefer_polite


def test_the_polite_demonstrator_never_copies_a_role_label_into_its_answer():
    conversation = render_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                    {"role": "user", "content": "How do I bake bread?"}])
    answer = polite_demonstrator(conversation)
    assert "User:" not in answer and "user:" not in answer.lower()
    assert "How do I bake bread" in answer
    assert "Human:" not in polite_demonstrator("\n\nHuman: What is a mole?\n\nAssistant:")
    assert "What is a mole" in polite_demonstrator("\n\nHuman: What is a mole?\n\nAssistant:")


def test_the_polite_demonstrator_answers_plain_and_empty_prompts():
    assert "the tides" in polite_demonstrator("Explain the tides.")
    assert "help with that" in polite_demonstrator("   ")


def test_oracles_rank_densely_with_ties():
    assert dense_ranks([3, 1, 3]) == [1, 2, 1]
    assert prefer_polite("q", ["No.", "Thank you, glad to help."]) == [2, 1]


def test_the_concise_complete_score_rewards_a_finished_answer_of_a_reasonable_length():
    from annotation.oracles import concise_complete_score

    finished = "Paris is the capital of France, and it has been for a very long time now."  # 16 words
    assert concise_complete_score("", finished) == 1.0
    assert concise_complete_score("", finished[:-1]) == 0.0            # stopped mid-sentence
    assert concise_complete_score("", 'He said "yes."') == pytest.approx(1 - 0.05 * 9)  # 3 words: 9 short
    assert concise_complete_score("", "word " * 50 + "end.") == pytest.approx(1 - 0.05 * 11)  # 51 words
    assert concise_complete_score("", "") == pytest.approx(-0.6)


def test_prefer_concise_complete_ranks_by_the_score_with_ties():
    from annotation.oracles import prefer_concise_complete

    cut = "Paris is the capital of France, and it has been for a very long time now and"
    done = "Paris is the capital of France, and it has been for a very long time now."
    assert prefer_concise_complete("", [cut, done, done]) == [2, 1, 1]
