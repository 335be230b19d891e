"""Continuous-batching generation in torch, for prompts that carry visual tokens.

Requests wait in a bounded FIFO queue; each :meth:`Engine.step` admits queued requests into
free cache slots (prefilling their prompts, with visual embeddings spliced in at the image
placeholders), then runs one decode step for every running request at once.  A request that
finishes frees its slot at once; the next step can hand it to a queued request while the
others carry on.  The KV cache (:mod:`facestream.llm.kv_cache`) is allocated once, sized
``max_batch x max_seq_len``, and reused; a shared prompt prefix (the system prompt) is
computed once at construction and copied into a slot instead of being prefilled again.
The decode step has static shapes per batch and key-span bucket, keeps its inputs on the
device and, on CUDA, replays a CUDA graph (:mod:`facestream.llm.decoder`); greedy tokens
are chosen on the device, and the host reads them once per step.

Which requests are refused, queued, shed (``stats["shed"]`` counts them) and admitted is
decided in :mod:`facestream.llm.admission`; slots, the loop and results are
:class:`facestream.llm.slots.SlotEngine`'s; the request and result types are in
:mod:`facestream.llm.requests`.  The model's hot path (prefill, decode_step) lives in
:mod:`facestream.llm.kv_cache`; token choice is :func:`sample` below, incremental
detokenisation with stop strings :class:`facestream.llm.detokenize.TextTail`.
"""

from __future__ import annotations

import random

import torch

from facestream.errors import ConfigError
from facestream.llm.admission import shares_prefix
from facestream.llm.decoder import StaticDecoder
from facestream.llm.detokenize import TextTail
from facestream.llm.kv_cache import LlamaParts, SlotKVCache, embed_prompt, prefill
from facestream.llm.slots import Running, SlotEngine, check_sizes


class Engine(SlotEngine):
    """Continuous-batching generator over a transformers LLaMA-architecture model (a
    :class:`~facestream.llm.requests.GenerationBackend`; the queue, slots and loop are
    :class:`~facestream.llm.slots.SlotEngine`'s).

    ``device``/``dtype`` default to the model's; if given, the model is moved there.
    ``tokenizer`` may be None (token ids only: results have empty text and requests may not
    use stop strings).  ``cuda_graphs``: on CUDA, replay the decode step from CUDA graphs
    (setting ``llm_cuda_graphs``); no effect elsewhere."""

    def __init__(self, model, tokenizer, *, max_batch: int, max_seq_len: int,
                 queue_size: int = 256, image_token_id: int | None = None,
                 prefix_ids: tuple[int, ...] = (), device=None, dtype=None,
                 cuda_graphs: bool = True) -> None:
        check_sizes(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size)
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        if (param.device, param.dtype) != (self.device, self.dtype):
            model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self._parts = LlamaParts.from_model(model, max_seq_len=max_seq_len)
        super().__init__(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size,
                         vocab=self._parts.vocab, hidden=self._parts.hidden,
                         image_token_id=image_token_id, has_tokenizer=tokenizer is not None,
                         eos=_eos_ids(model, tokenizer))
        self._tokenizer = tokenizer
        self._cache = SlotKVCache.allocate(self._parts, slots=max_batch,
                                           max_seq_len=max_seq_len, device=self.device,
                                           dtype=self.dtype)
        self._prefix_ids = tuple(prefix_ids)
        self._prefix = self._compute_prefix() if prefix_ids else None
        self._decoder = StaticDecoder(self._parts, self._cache, max_batch=max_batch,
                                      max_seq_len=max_seq_len, cuda_graphs=cuda_graphs)
        self._placed: list[Running | None] = [None] * max_batch   # what the decoder feeds
        self._sampled: list[int] = []       # placed slots whose requests sample

    # ---- internals --------------------------------------------------------------------

    def _advance(self) -> dict[int, str]:
        with torch.inference_mode():
            return super()._advance()

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
        admitted = self._take_queued()
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
            self._slots[slot] = Running(queued, len(ids), tail, generator)
        self._count(prefill_tokens=prefilled, prefix_hits=prefix_hits)
        return self._sample([slot for slot, _ in admitted], torch.stack(last_logits))

    def _decode(self, active: list[int]) -> list[tuple[int, str]]:
        """One token for every running slot through the static step (slots ``0..bucket-1``;
        the ones not running are parked and ignored); greedy rows are chosen on the device,
        and the host reads the chosen tokens once (to accept them)."""
        self._place(active)
        span = max(self._slots[b].length for b in active) + 1
        logits = self._decoder.step(rows=active[-1] + 1, span=span)     # [bucket, V]
        chosen = logits.argmax(dim=-1)                                  # [bucket]
        for b in self._sampled:
            running = self._slots[b]
            request = running.queued.request
            chosen[b] = draw(logits[b], request.temperature, running.state,
                             top_p=request.top_p)
        self._decoder.advance(chosen)
        for b in active:
            self._slots[b].length += 1
        on_host = chosen.tolist()                                       # host sync
        return self._accept(active, [on_host[b] for b in active])

    def _place(self, active: list[int]) -> None:
        """Tell the decoder about the requests that joined since the last step (their last
        token and position) and park the slots of those that left; nothing when none did."""
        placed = self._placed
        joined = [b for b in active if placed[b] is not self._slots[b]]
        left = [b for b, running in enumerate(placed)
                if running is not None and self._slots[b] is not running and b not in joined]
        if not joined and not left:
            return
        for b in left:
            placed[b] = None
        for b in joined:
            placed[b] = self._slots[b]
        self._decoder.place(joined + left,
                            [self._slots[b].tokens[-1] for b in joined] + [0] * len(left),
                            [self._slots[b].length for b in joined] + [None] * len(left))
        self._sampled = [b for b in active if self._slots[b].queued.request.temperature > 0]

    def _sample(self, slots: list[int], logits: torch.Tensor) -> list[tuple[int, str]]:
        """Sample one token per slot (logits: [len(slots), V]) and accept them."""
        running = [self._slots[b] for b in slots]
        chosen = sample(logits, [r.queued.request.temperature for r in running],
                        [r.state for r in running],
                        top_ps=[r.queued.request.top_p for r in running]).tolist()  # host sync
        return self._accept(slots, chosen)


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

def sample(logits: torch.Tensor, temperatures: list[float],
           generators: list[torch.Generator | None], *,
           top_ps: list[float] | None = None) -> torch.Tensor:
    """One token per row, on the logits' device (no host sync).

    logits: [B, V]; temperatures, generators: B entries (0 / None = greedy); top_ps: B
    nucleus thresholds (None: all 1, every token) -> [B] long"""
    tokens = logits.argmax(dim=-1)                                  # [B]
    for row, (temperature, generator) in enumerate(zip(temperatures, generators)):
        if temperature > 0:
            tokens[row] = draw(logits[row], temperature, generator,
                               top_p=1.0 if top_ps is None else top_ps[row])
    return tokens


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None, *,
         top_p: float = 1.0) -> torch.Tensor:
    """One token drawn from ``softmax(logits / temperature)``, restricted to the nucleus
    ``top_p``, on the logits' device (no host sync).  logits: [V] -> [] long"""
    probs = torch.softmax(logits.float() / temperature, dim=-1)    # [V]
    if top_p < 1:
        probs = nucleus(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator)[0]


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` [V] with every token outside the nucleus zeroed: the most likely tokens,
    in order, up to and including the one whose cumulative probability reaches ``top_p``
    (the top token always stays).  Not renormalised (``multinomial`` does not need it)."""
    ordered, order = probs.sort(descending=True)                    # [V], [V]
    before = ordered.cumsum(0) - ordered                            # mass of the better ones
    ordered[before >= top_p] = 0
    return torch.zeros_like(probs).scatter(0, order, ordered)
