"""Admission to the in-process LLM engine: which requests it refuses, queues, sheds and runs.

Plain Python (no torch), so the policy can be tested without a model;
:class:`facestream.llm.engine.Engine` keeps a :class:`RequestQueue` under its lock and does
the model work.  A request is

* **refused** at submit when it can never run (:func:`check_admissible`): prompt plus
  ``max_new_tokens`` longer than ``max_seq_len``, a token id outside the vocabulary,
  placeholders and visual rows that disagree, or stop strings without a tokenizer.  It
  raises RequestError and is never queued.
* **queued** otherwise, at the back of one FIFO queue of ``queue_size`` entries.  Submitting
  never blocks: the submitters are vision workers that must keep pace with their streams.
* **shed** when the queue is full and another request arrives: the oldest queued request
  that is not urgent leaves the queue and its future resolves at once with
  ``finish_reason="shed"`` (:func:`shed_result`; the language stage answers None for its
  window, which keeps its last answer).  The oldest goes because it has waited longest, so
  its answer would be the stalest; bounding the queue means overload costs answers, not
  memory and ever longer waits.  Urgent requests are never shed: when every queued request
  is urgent the arrival is refused with QueueFull instead (retry later or raise
  ``llm_queue_size``).  Running requests are never shed either: their prefill is paid for.
* **admitted** at each engine step: the oldest queued requests take the free KV-cache slots,
  lowest slot first, as many as there are free slots (:meth:`RequestQueue.admit`).  One
  whose prompt starts with the engine's shared prefix and goes on past it
  (:func:`shares_prefix`) gets the prefix's cache copied in; only the rest is prefilled.
  One that carries the same visual tokens (the same tensor) as a request admitted before it
  — another task asked of the same window — may instead copy the prompt prefix the two share
  from that request's slot (:func:`shared_length`), once that request has prefilled it.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Iterator

from facestream.llm.requests import (GenerationRequest, GenerationResult, QueueFull,
                                     RequestError, check_splice)


@dataclass
class Queued:
    """An accepted request waiting for a slot: the future its result goes to and when it was
    submitted (``time.perf_counter``)."""

    request: GenerationRequest
    future: Future
    submitted: float


class RequestQueue:
    """The engine's bounded FIFO queue, with the shedding rule above.  Not thread-safe: the
    engine calls it under its own lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: deque[Queued] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Queued]:
        """The queued requests, oldest first (left in the queue)."""
        return iter(self._queue)

    def push(self, queued: Queued) -> Queued | None:
        """Append ``queued``.  When the queue is full, first take out and return the oldest
        request that is not urgent (shed: the caller resolves its future with
        :func:`shed_result`); raise QueueFull, queueing nothing, when all are urgent."""
        shed = None
        if len(self._queue) >= self.size:
            shed = next((q for q in self._queue if not q.request.urgent), None)
            if shed is None:
                raise QueueFull(f"request {queued.request.request_id}: LLM queue holds "
                                f"{self.size} urgent requests; nothing can be shed; retry "
                                "later or raise llm_queue_size")
            self._queue.remove(shed)
        self._queue.append(queued)
        return shed

    def admit(self, free: list[int]) -> list[tuple[int, Queued]]:
        """Take the oldest requests out for the ``free`` slots (ascending): (slot, request)
        pairs, as many as there are both."""
        taken = [self._queue.popleft() for _ in range(min(len(free), len(self._queue)))]
        return list(zip(free, taken))

    def drain(self) -> list[Queued]:
        """Take every request out, oldest first."""
        drained = list(self._queue)
        self._queue.clear()
        return drained


def shed_result(queued: Queued, now: float) -> GenerationResult:
    """The result of a request shed at ``now`` (``time.perf_counter``): no tokens, no first
    token (``ttft_s = nan``)."""
    request = queued.request
    return GenerationResult(request.request_id, "", (), "shed", len(request.prompt_ids),
                            math.nan, now - queued.submitted)


def check_admissible(request: GenerationRequest, *, max_seq_len: int, vocab: int,
                     hidden: int, image_token_id: int | None, has_tokenizer: bool) -> None:
    """Raise RequestError unless ``request`` can run on an engine with these limits: its
    splice fits (:func:`~facestream.llm.requests.check_splice`), prompt + max_new_tokens fit
    ``max_seq_len``, its ids other than ``image_token_id`` lie in ``0..vocab - 1``, and it
    has no stop strings unless the engine has a tokenizer."""
    rid, ids = request.request_id, request.prompt_ids
    check_splice(request, image_token_id=image_token_id, hidden=hidden,
                 what="the model's hidden size")
    need = len(ids) + request.max_new_tokens
    if need > max_seq_len:
        raise RequestError(f"request {rid}: prompt ({len(ids)} tokens) + max_new_tokens "
                           f"({request.max_new_tokens}) = {need} exceeds max_seq_len "
                           f"{max_seq_len}; shorten it or raise llm_max_seq_len")
    bad = [t for t in ids if t != image_token_id and not 0 <= t < vocab]
    if bad:
        raise RequestError(f"request {rid}: token id {bad[0]} is outside the vocabulary "
                           f"(0..{vocab - 1})")
    if request.stop and not has_tokenizer:
        raise RequestError(f"request {rid}: stop strings need a tokenizer; this engine "
                           "has none")


def shares_prefix(prompt_ids: tuple[int, ...], prefix_ids: tuple[int, ...]) -> bool:
    """Whether a prompt can start from the shared prefix's cache: it begins with a
    non-empty ``prefix_ids`` and has at least one token after it."""
    n = len(prefix_ids)
    return n > 0 and len(prompt_ids) > n and prompt_ids[:n] == prefix_ids


def shared_length(prompt_ids: tuple[int, ...], donor_ids: tuple[int, ...], *,
                  image_token_id: int | None) -> int:
    """How many leading positions a prompt can copy from the cache of a request carrying the
    same visual tokens (``donor_ids`` its prompt): their common prefix, at most all but the
    prompt's last position (which must be computed for its logits), and 0 unless that
    covers every image placeholder of the prompt (the visual rows are then the same)."""
    limit = min(len(prompt_ids) - 1, len(donor_ids))
    n = 0
    while n < limit and prompt_ids[n] == donor_ids[n]:
        n += 1
    return n if image_token_id not in prompt_ids[n:] else 0
