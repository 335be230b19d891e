"""AnswerDrafts: the draft tokens speculative decoding checks, looked up in recent answers."""

from __future__ import annotations

import pytest

from facestream.llm.drafts import AnswerDrafts

PROMPT = (90, 91, 92, 93)             # a prompt's last tokens: the template's "assistant" turn


def test_nothing_is_proposed_before_an_answer_was_seen():
    drafts = AnswerDrafts()
    assert drafts.propose(PROMPT, [], 8) == []
    assert len(drafts) == 0


def test_an_answer_is_proposed_again_from_its_start_and_from_its_middle():
    drafts = AnswerDrafts()
    drafts.observe((1, 2) + PROMPT, [10, 11, 12, 13, 14])
    assert drafts.propose((7, 8) + PROMPT, [], 3) == [10, 11, 12]          # the template
    assert drafts.propose((7, 8) + PROMPT, [10, 11], 8) == [12, 13, 14]    # then the answer
    assert drafts.propose((7, 8) + PROMPT, [10, 11, 12, 13, 14], 8) == []  # its end: nothing


def test_the_longest_match_wins_and_then_the_most_recent():
    drafts = AnswerDrafts(context=4, min_match=1)
    drafts.observe(PROMPT, [5, 6, 7, 8])          # "6 7" continues with 8
    drafts.observe(PROMPT, [1, 6, 9])             # "6" alone: the most recent continues with 9
    assert drafts.propose(PROMPT, [5, 6], 1) == [7]     # "5 6" seen once: its continuation
    assert drafts.propose(PROMPT, [3, 6], 1) == [9]     # only "6" matches: the latest answer


def test_a_match_shorter_than_min_match_proposes_nothing():
    drafts = AnswerDrafts(context=4, min_match=2)
    drafts.observe(PROMPT, [5, 6, 7])
    assert drafts.propose(PROMPT, [4, 6], 3) == []
    assert drafts.propose(PROMPT, [5, 6], 3) == [7]


def test_limit_bounds_the_draft():
    drafts = AnswerDrafts()
    drafts.observe(PROMPT, list(range(10, 30)))
    assert drafts.propose(PROMPT, [], 4) == [10, 11, 12, 13]
    assert drafts.propose(PROMPT, [], 0) == []


def test_history_keeps_the_recent_answers_and_forgets_the_old():
    drafts = AnswerDrafts(history=4, context=2, min_match=2)
    for first in range(100, 106):                 # six distinct answers through four places
        drafts.observe(PROMPT, [first, first + 1000])
        drafts.observe(PROMPT, [first, first + 1000])       # a repeat takes no new place
    assert len(drafts) <= 4
    assert drafts.propose(PROMPT, [105], 1) == [1105]       # recent: kept (match "93 105")
    assert drafts.propose(PROMPT, [100], 1) == []           # oldest: forgotten


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="min_match"):
        AnswerDrafts(context=2, min_match=3)
    with pytest.raises(ValueError, match="history"):
        AnswerDrafts(history=0)
