"""The model-independent half of a continuous-batching engine: slots, the loop, results.

An engine owns ``max_batch`` slots, one running request each.  Every :meth:`SlotEngine.step`
admits queued requests into free slots (the subclass prefills them, possibly over several
steps, and picks their first tokens once their prompt is complete), then runs one decode
step for all the others whose prompt is complete (the subclass computes the logits and picks
one token per slot); a request that finishes frees its slot at once.  What is refused,
queued, shed and admitted is :mod:`facestream.llm.admission`'s rule; how tokens become text
with stop strings is :class:`facestream.llm.detokenize.TextTail`.

Two engines fill in the model: :class:`facestream.llm.engine.Engine` (torch, a transformers
LLaMA, visual tokens spliced in) and :class:`facestream.llm.llamacpp.LlamaCppEngine`
(llama.cpp on a GGUF file, text prompts).  Both are
:class:`~facestream.llm.requests.GenerationBackend` s.  No torch here.
"""

from __future__ import annotations

import abc
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from facestream.errors import ConfigError
from facestream.llm.admission import Queued, RequestQueue, check_admissible, shed_result
from facestream.llm.detokenize import TextTail
from facestream.llm.requests import GenerationRequest, GenerationResult, RequestError


def check_sizes(*, max_batch: int, max_seq_len: int, queue_size: int) -> None:
    """ConfigError unless an engine of these sizes can hold a request."""
    if max_batch < 1 or max_seq_len < 2 or queue_size < 1:
        raise ConfigError(f"LLM engine: max_batch={max_batch}, max_seq_len={max_seq_len}, "
                          f"queue_size={queue_size}; need >= 1, >= 2, >= 1")


@dataclass
class Running:
    """A request in a slot: ``length`` positions of the slot hold its context; ``state`` is
    the engine's own per-request data (a torch generator, a numpy random generator)."""

    queued: Queued
    length: int
    tail: TextTail | None
    state: Any = None
    tokens: list[int] = field(default_factory=list)
    first_token_at: float = math.nan


class SlotEngine(abc.ABC):
    """Slots, queue and loop; subclasses implement :meth:`_admit` and :meth:`_decode`.

    ``submit`` is thread-safe and never blocks; ``step`` is driven by one thread at a time
    (the caller's, or the loop thread ``start`` runs).  ``vocab``/``hidden`` bound what a
    request may hold; ``has_tokenizer`` False means token ids only (empty texts, no stop
    strings)."""

    def __init__(self, *, max_batch: int, max_seq_len: int, queue_size: int, vocab: int,
                 hidden: int | None, image_token_id: int | None, has_tokenizer: bool,
                 eos: frozenset[int]) -> None:
        check_sizes(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size)
        self._max_batch, self._max_seq_len = max_batch, max_seq_len
        self._vocab, self._hidden = vocab, hidden
        self._image_token_id = image_token_id
        self._has_tokenizer = has_tokenizer
        self._eos = eos
        self._slots: list[Running | None] = [None] * max_batch
        self._queue = RequestQueue(queue_size)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._step_lock = threading.Lock()
        self._counts = {"shed": 0, "steps": 0, "tokens": 0, "prefill_tokens": 0,
                        "prefix_hits": 0, "shared_prefix_tokens": 0}
        self._thread: threading.Thread | None = None
        self._closing = False

    # ---- submission -------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; returns a future of its :class:`GenerationResult`.  Thread-safe,
        non-blocking.  Raises RequestError for a request that can never run, QueueFull when
        the queue is full of urgent requests (the rule: :mod:`facestream.llm.admission`)."""
        check_admissible(request, max_seq_len=self._max_seq_len, vocab=self._vocab,
                         hidden=self._hidden, image_token_id=self._image_token_id,
                         has_tokenizer=self._has_tokenizer)
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RequestError(f"request {request.request_id}: engine is closed; "
                                   "create a new engine")
            shed = self._queue.push(Queued(request, future, time.perf_counter()))
            if shed is not None:
                self._counts["shed"] += 1
            self._wake.notify_all()
        if shed is not None:
            shed.future.set_result(shed_result(shed, time.perf_counter()))
        return future

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run ``requests`` to completion; results in request order.  Blocking.  Without a
        loop thread it drives ``step`` itself; it waits for queue room rather than shedding
        its own requests (other submitters may still cause shedding)."""
        futures = []
        for request in requests:
            while self.stats["queued"] >= self._queue.size:
                if self._thread is None:
                    self.step()
                else:
                    time.sleep(0.001)
            futures.append(self.submit(request))
        if self._thread is None:
            while not all(f.done() for f in futures):
                self.step()
        return [f.result() for f in futures]

    @property
    def stats(self) -> dict[str, int]:
        """Counters: queued, running, shed, steps, tokens (generated), prefill_tokens
        (prompt positions computed, prefix copies excluded), prefix_hits (requests that
        started from a copied prefix: the static one or another request's),
        shared_prefix_tokens (positions copied from another request's slot).  Thread-safe."""
        with self._lock:
            return {"queued": len(self._queue),
                    "running": sum(s is not None for s in self._slots), **self._counts}

    # ---- the loop ---------------------------------------------------------------------

    def step(self) -> list[GenerationResult]:
        """Admit queued requests into free slots (prefilling them, or a chunk of them), then
        one decode step for all running requests whose prompt is complete.  Returns the
        requests that finished (may be empty); their futures are resolved too.  Blocking;
        calls from several threads are serialised."""
        with self._step_lock:
            finished = self._advance()
            done = [self._release(slot, reason) for slot, reason in sorted(finished.items())]
            with self._lock:
                self._counts["steps"] += 1
        for future, result in done:
            future.set_result(result)
        return [result for _, result in done]

    def start(self) -> None:
        """Drive ``step`` from a daemon thread until ``close``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the loop thread (if any) after its current step and cancel the futures of
        requests still queued or running.  Blocking until the thread has stopped."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._step_lock, self._lock:
            pending = [q.future for q in self._queue.drain()]
            pending += [s.queued.future for s in self._slots if s is not None]
            self._slots = [None] * self._max_batch
        for future in pending:
            future.cancel()
        self._closed()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._queue \
                        and all(s is None for s in self._slots):
                    self._wake.wait()
                if self._closing:
                    return
            try:
                self.step()
            except Exception as exc:    # a broken model is fatal: fail every waiter, stop
                with self._lock:
                    self._closing = True
                    waiting = [q.future for q in self._queue]
                    waiting += [s.queued.future for s in self._slots if s is not None]
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                return

    # ---- what a subclass fills in -----------------------------------------------------

    def _advance(self) -> dict[int, str]:
        """Admit (and prefill), then decode the slots whose prompt is complete: finished
        slot -> reason.  A slot whose prompt is still partly prefilled has no tokens yet."""
        finished = dict(self._admit())
        active = [b for b, s in enumerate(self._slots)
                  if s is not None and s.tokens and b not in finished]
        if active:
            finished.update(self._decode(active))
        return finished

    @abc.abstractmethod
    def _admit(self) -> list[tuple[int, str]]:
        """Prefill requests taken with :meth:`_take_queued` into their slots, set
        ``self._slots[slot]`` for each, choose their first tokens (:meth:`_accept`) once
        their prompt is complete (it may take several steps)."""

    @abc.abstractmethod
    def _decode(self, active: list[int]) -> list[tuple[int, str]]:
        """One token for each slot in ``active`` (ascending), through :meth:`_accept`."""

    def _closed(self) -> None:
        """Release the model's resources after :meth:`close` (default: nothing)."""

    # ---- shared by the subclasses -----------------------------------------------------

    def _take_queued(self) -> list[tuple[int, Queued]]:
        """The oldest queued requests paired with the free slots, lowest slot first."""
        free = [b for b, s in enumerate(self._slots) if s is None]
        with self._lock:
            return self._queue.admit(free)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self._counts[key] += value

    def _accept(self, slots: list[int], chosen: list[int]) -> list[tuple[int, str]]:
        """Append each slot's chosen token, and return the slots that are now finished with
        their reason: "eos", "stop" (a stop string), "length" (max_new_tokens)."""
        now = time.perf_counter()
        finished = []
        for b, token in zip(slots, chosen):
            running = self._slots[b]
            request = running.queued.request
            if not running.tokens:
                running.first_token_at = now
            running.tokens.append(token)
            hit_stop = running.tail.push(token) if running.tail is not None else False
            if token in self._eos and not request.ignore_eos:
                finished.append((b, "eos"))
            elif hit_stop:
                finished.append((b, "stop"))
            elif len(running.tokens) >= request.max_new_tokens:
                finished.append((b, "length"))
        self._count(tokens=len(chosen))
        return finished

    def _release(self, slot: int, reason: str) -> tuple[Future, GenerationResult]:
        """Free ``slot`` and build its result; the caller resolves the future."""
        running = self._slots[slot]
        with self._lock:
            self._slots[slot] = None
        self._freed(slot)
        queued = running.queued
        result = GenerationResult(
            request_id=queued.request.request_id,
            text=running.tail.text if running.tail is not None else "",
            token_ids=tuple(running.tokens), finish_reason=reason,
            prompt_tokens=len(queued.request.prompt_ids),
            ttft_s=running.first_token_at - queued.submitted,
            latency_s=time.perf_counter() - queued.submitted)
        return queued.future, result

    def _freed(self, slot: int) -> None:
        """A slot was freed: forget its context (default: nothing; a cache that is written
        from position 0 by the next prefill needs no clearing)."""
