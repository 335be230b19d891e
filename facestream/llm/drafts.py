"""Draft tokens for speculative decoding, looked up in the engine's own recent answers.

A describer's sentences repeat themselves ("A woman with a smile and a happy expression."):
after a few windows, the next tokens of an answer are very often the tokens that followed the
same few tokens in an earlier answer.  :class:`AnswerDrafts` keeps the recent answers (each
behind the last tokens of its prompt, which are the chat template's "assistant" turn) and,
given what a sequence holds so far, proposes the continuation of the longest recent match:
suffix / lookup decoding, with no draft model.  The engine checks every proposed token in one
pass over the weights (a memory-bound CPU model reads them once for the whole piece instead
of once per token) and keeps the tokens its own greedy choice agrees with, so a draft never
decides a token; it only saves passes when it is right.

Pure Python; not thread-safe (the engine's step thread owns it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence


class AnswerDrafts:
    """The ``history`` most recent distinct answers, indexed by every n-gram of up to
    ``context`` tokens; :meth:`propose` continues the longest n-gram ending the sequence."""

    def __init__(self, *, history: int = 256, context: int = 4, min_match: int = 1) -> None:
        if history < 1 or not 1 <= min_match <= context:
            raise ValueError(f"AnswerDrafts: history={history}, context={context}, "
                             f"min_match={min_match}; need history >= 1, "
                             "1 <= min_match <= context")
        self._history, self._context, self._min_match = history, context, min_match
        self._answers: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self._index: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def observe(self, prompt_ids: Sequence[int], answer: Sequence[int]) -> None:
        """Remember ``answer`` (generated after ``prompt_ids``); the most recent occurrence of
        an n-gram wins."""
        if not answer:
            return
        tokens = tuple(prompt_ids[-self._context:]) + tuple(answer)
        if tokens in self._answers:
            self._answers.move_to_end(tokens)
        else:
            self._answers[tokens] = None
            if len(self._answers) > self._history:        # forget the older half at once
                for old in list(self._answers)[: self._history // 2]:
                    del self._answers[old]
                self._index = {}
                for kept in self._answers:
                    self._add(kept)
                return
        self._add(tokens)

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int],
                limit: int) -> list[int]:
        """Up to ``limit`` tokens likely to follow ``prompt_ids + generated``: what followed
        the longest (up to ``context`` tokens) n-gram ending it in a recent answer; [] when
        none matches."""
        if limit < 1:
            return []
        tail = tuple(prompt_ids[-self._context:]) + tuple(generated[-self._context:])
        for n in range(min(self._context, len(tail)), self._min_match - 1, -1):
            found = self._index.get(tail[-n:])
            if found is not None:
                tokens, end = found
                return list(tokens[end:end + limit])
        return []

    def _add(self, tokens: tuple[int, ...]) -> None:
        # Key: the n tokens ending before position ``end``; value: where they continue.
        for end in range(1, len(tokens)):
            for n in range(1, min(self._context, end) + 1):
                self._index[tokens[end - n:end]] = (tokens, end)
