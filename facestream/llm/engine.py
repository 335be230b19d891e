"""Continuous-batching generation for prompts that carry visual tokens: the engine's loop.

Requests wait in a bounded FIFO queue; each :meth:`Engine.step` admits queued requests into
free cache slots (prefilling their prompts, with visual embeddings spliced in at the image
placeholders), then runs one decode step for every running request at once.  A request that
finishes frees its slot at once; the next step can hand it to a queued request while the
others carry on.  The KV cache (:mod:`facestream.llm.kv_cache`) is allocated once, sized
``max_batch x max_seq_len``, and reused; a shared prompt prefix (the system prompt) is
computed once at construction and copied into a slot instead of being prefilled again.

Which requests are refused, queued, shed (``stats["shed"]`` counts them) and admitted is
decided in :mod:`facestream.llm.admission`; the request and result types are in
:mod:`facestream.llm.requests`.  The model's hot path (prefill, decode_step) lives in
:mod:`facestream.llm.kv_cache`; token choice (:func:`sample`) and incremental detokenisation
with stop strings (:class:`TextTail`) are at the end of this module.
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from facestream.errors import ConfigError
from facestream.llm.admission import (Queued, RequestQueue, check_admissible, shares_prefix,
                                      shed_result)
from facestream.llm.kv_cache import LlamaParts, SlotKVCache, decode_step, embed_prompt, prefill
from facestream.llm.requests import GenerationRequest, GenerationResult, RequestError


@dataclass
class _Running:
    queued: Queued
    length: int                             # positions of the slot filled in the cache
    tail: TextTail | None
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    first_token_at: float = math.nan


class Engine:
    """Continuous-batching generator over a transformers LLaMA-architecture model (a
    :class:`~facestream.llm.requests.GenerationBackend`).

    ``submit`` is thread-safe and never blocks; ``step`` must be driven by one thread at a
    time (the caller's, or the loop thread ``start`` runs).  ``device``/``dtype`` default
    to the model's; if given, the model is moved there.  ``tokenizer`` may be None (token ids
    only: results have empty text and requests may not use stop strings)."""

    def __init__(self, model, tokenizer, *, max_batch: int, max_seq_len: int,
                 queue_size: int = 256, image_token_id: int | None = None,
                 prefix_ids: tuple[int, ...] = (), device=None, dtype=None) -> None:
        if max_batch < 1 or max_seq_len < 2 or queue_size < 1:
            raise ConfigError(f"LLM engine: max_batch={max_batch}, max_seq_len={max_seq_len}, "
                              f"queue_size={queue_size}; need >= 1, >= 2, >= 1")
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        if (param.device, param.dtype) != (self.device, self.dtype):
            model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self._parts = LlamaParts.from_model(model, max_seq_len=max_seq_len)
        self._tokenizer = tokenizer
        self._max_batch, self._max_seq_len = max_batch, max_seq_len
        self._image_token_id = image_token_id
        self._eos = _eos_ids(model, tokenizer)
        self._cache = SlotKVCache.allocate(self._parts, slots=max_batch,
                                           max_seq_len=max_seq_len, device=self.device,
                                           dtype=self.dtype)
        self._prefix_ids = tuple(prefix_ids)
        self._prefix = self._compute_prefix() if prefix_ids else None
        self._slots: list[_Running | None] = [None] * max_batch
        self._queue = RequestQueue(queue_size)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._step_lock = threading.Lock()
        self._counts = {"shed": 0, "steps": 0, "tokens": 0, "prefill_tokens": 0,
                        "prefix_hits": 0}
        self._thread: threading.Thread | None = None
        self._closing = False

    # ---- submission -------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; returns a future of its :class:`GenerationResult`.  Thread-safe,
        non-blocking.  Raises RequestError for a request that can never run, QueueFull when
        the queue is full of urgent requests (the rule: :mod:`facestream.llm.admission`)."""
        check_admissible(request, max_seq_len=self._max_seq_len, vocab=self._parts.vocab,
                         hidden=self._parts.hidden, image_token_id=self._image_token_id,
                         has_tokenizer=self._tokenizer is not None)
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RequestError(f"request {request.request_id}: engine is closed; "
                                   "create a new Engine")
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
        (prompt positions computed, prefix copies excluded), prefix_hits.  Thread-safe."""
        with self._lock:
            return {"queued": len(self._queue),
                    "running": sum(s is not None for s in self._slots), **self._counts}

    # ---- the loop ---------------------------------------------------------------------

    def step(self) -> list[GenerationResult]:
        """Admit queued requests into free slots (prefilling them), then one decode step for
        all running requests.  Returns the requests that finished (may be empty); their
        futures are resolved too.  Blocking; calls from several threads are serialised."""
        with self._step_lock:
            with torch.inference_mode():
                finished = dict(self._admit())
                active = [b for b, s in enumerate(self._slots)
                          if s is not None and b not in finished]
                if active:
                    finished.update(self._decode(active))
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

    # ---- internals --------------------------------------------------------------------

    def _compute_prefix(self) -> SlotKVCache:
        ids = self._prefix_ids
        if self._image_token_id in ids or len(ids) >= self._max_seq_len:
            raise ConfigError(f"LLM engine: prefix_ids ({len(ids)} tokens) must be shorter "
                              f"than max_seq_len {self._max_seq_len} and hold no image "
                              "placeholder")
        prefix = SlotKVCache.allocate(self._parts, slots=1, max_seq_len=len(ids),
                                      device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            embeds = embed_prompt(self._parts, ids, None, image_token_id=None,
                                  device=self.device)
            prefill(self._parts, prefix, embeds, slot=0, start=0)
        return prefix

    def _admit(self) -> list[tuple[int, str]]:
        """Prefill queued requests into free slots, lowest slot first; sample their first
        tokens together (one host sync)."""
        free = [b for b, s in enumerate(self._slots) if s is None]
        with self._lock:
            admitted = self._queue.admit(free)
        if not admitted:
            return []
        last_logits, prefilled, prefix_hits = [], 0, 0
        for slot, queued in admitted:
            request = queued.request
            ids = request.prompt_ids
            start = 0
            if shares_prefix(ids, self._prefix_ids):
                start, prefix_hits = len(self._prefix_ids), prefix_hits + 1
                self._cache.copy_in(self._prefix, slot=slot, length=start)
            embeds = embed_prompt(self._parts, ids[start:], request.visual,   # [T, hidden]
                                  image_token_id=self._image_token_id, device=self.device)
            last_logits.append(prefill(self._parts, self._cache, embeds, slot=slot,
                                       start=start))
            prefilled += len(ids) - start
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(request.seed if request.seed is not None
                                      else random.getrandbits(63))
            tail = (TextTail(self._tokenizer, request.stop, include_stop=request.include_stop)
                    if self._tokenizer else None)
            self._slots[slot] = _Running(queued, len(ids), tail, generator)
        slots = [slot for slot, _ in admitted]
        with self._lock:
            self._counts["prefill_tokens"] += prefilled
            self._counts["prefix_hits"] += prefix_hits
        return self._accept(slots, torch.stack(last_logits))

    def _decode(self, active: list[int]) -> list[tuple[int, str]]:
        """One token for every running slot; slots ``0..max(active)`` go through the step,
        holes among them are fed a dummy token at position 0 and ignored."""
        n = active[-1] + 1
        tokens, positions = [0] * n, [0] * n
        for b in active:
            running = self._slots[b]
            tokens[b], positions[b] = running.tokens[-1], running.length
        logits = decode_step(self._parts, self._cache,
                             torch.tensor(tokens, device=self.device),
                             torch.tensor(positions, device=self.device),
                             span=max(positions) + 1)                  # [n, V]
        for b in active:
            self._slots[b].length += 1
        if len(active) < n:
            logits = logits[torch.tensor(active, device=self.device)]
        return self._accept(active, logits)

    def _accept(self, slots: list[int], logits: torch.Tensor) -> list[tuple[int, str]]:
        """Sample one token per slot (logits: [len(slots), V]), append it, and return the
        slots that are now finished with their reason."""
        running = [self._slots[b] for b in slots]
        chosen = sample(logits, [r.queued.request.temperature for r in running],
                        [r.generator for r in running]).tolist()        # the step's host sync
        now = time.perf_counter()
        finished = []
        for b, r, token in zip(slots, running, chosen):
            request = r.queued.request
            if not r.tokens:
                r.first_token_at = now
            r.tokens.append(token)
            hit_stop = r.tail.push(token) if r.tail is not None else False
            if token in self._eos and not request.ignore_eos:
                finished.append((b, "eos"))
            elif hit_stop:
                finished.append((b, "stop"))
            elif len(r.tokens) >= request.max_new_tokens:
                finished.append((b, "length"))
        with self._lock:
            self._counts["tokens"] += len(chosen)
        return finished

    def _release(self, slot: int, reason: str) -> tuple[Future, GenerationResult]:
        """Free ``slot`` and build its result; the caller resolves the future."""
        running = self._slots[slot]
        with self._lock:
            self._slots[slot] = None
        queued = running.queued
        result = GenerationResult(
            request_id=queued.request.request_id,
            text=running.tail.text if running.tail is not None else "",
            token_ids=tuple(running.tokens), finish_reason=reason,
            prompt_tokens=len(queued.request.prompt_ids),
            ttft_s=running.first_token_at - queued.submitted,
            latency_s=time.perf_counter() - queued.submitted)
        return queued.future, result


def _eos_ids(model, tokenizer) -> frozenset[int]:
    """End-of-sequence ids: the generation config's (an int or a list) and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


# ---- token choice and text ------------------------------------------------------------

_REPLACEMENT = "\ufffd"     # what a tokenizer emits for an incomplete UTF-8 sequence


def sample(logits: torch.Tensor, temperatures: list[float],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row, on the logits' device (no host sync).

    logits: [B, V]; temperatures, generators: B entries (0 / None = greedy) -> [B] long"""
    tokens = logits.argmax(dim=-1)                                  # [B]
    for row, (temperature, generator) in enumerate(zip(temperatures, generators)):
        if temperature > 0:
            probs = torch.softmax(logits[row].float() / temperature, dim=-1)   # [V]
            tokens[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return tokens


class TextTail:
    """Text of one request's generated tokens, built incrementally, with stop strings.

    ``push`` decodes only the tokens since the last complete character (plus one token of
    context, so word-boundary spaces come out as in a full decode).  Special tokens are left
    out of the text.  Not thread-safe; one per request."""

    def __init__(self, tokenizer, stop: tuple[str, ...], *, include_stop: bool = False) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._include_stop = include_stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._ids: list[int] = []
        self._context = 0       # ids[context:read] were decoded already, as context
        self._read = 0          # ids[read:] are not in the text yet
        self.text = ""

    def push(self, token: int) -> bool:
        """Add one token; True when the text now contains a stop string, in which case
        ``text`` has been cut just before the first one (just after it with
        ``include_stop``)."""
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._context:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._context:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return False        # nothing printable yet (special token or partial character)
        searched_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += after[len(before):]
        self._context, self._read = self._read, len(self._ids)
        if not self._stop:
            return False
        hits = [(at, -len(s)) for s in self._stop if (at := self.text.find(s, searched_from)) >= 0]
        if not hits:
            return False
        at, minus_length = min(hits)      # the earliest; the longest of those starting there
        self.text = self.text[:at - minus_length if self._include_stop else at]
        return True
