"""Continuous-batching generation in torch, for prompts that carry visual tokens.

Requests wait in a bounded FIFO queue; queued requests take free cache slots as they come
free.  Each :meth:`Engine.step` is composed of

1. **admission** — the oldest queued requests take the free slots (lowest slot first) and
   join the FIFO list of requests whose prompt is not all in their slot yet;
2. **prefill** — one packed forward over chunks of those prompts, oldest first (continuing
   partly prefilled ones before starting new ones), at most ``prefill_chunk`` prompt
   positions in all (0: whole prompts).  A request's prompt may start from a copied prefix
   instead of being computed: the engine's static one (the system prompt, computed once at
   construction), or — for a request carrying the same visual tokens (the same tensor) as
   one admitted before it, i.e. another task asked of the same window — the prompt prefix
   the two share, image placeholders included, copied from that request's slot once it has
   prefilled past it (in the same forward, layer by layer; until then the request waits).
   A request whose prompt is complete gets its first token now; one still partly
   prefilled holds its slot and is not decoded;
3. **decode** — one token for every request whose prompt is complete, all slots at once,
   through a step with static shapes per batch and key-span bucket whose inputs stay on
   the device and which, on CUDA, replays a CUDA graph (:mod:`facestream.llm.decoder`);
   greedy tokens are chosen on the device, and the host reads them once per step.

So admitting a long prompt stalls the running answers by at most one budget's worth of
prompt positions per step.  A request that finishes frees its slot at once; the next step
can hand it to a queued request while the others carry on.  The KV cache
(:mod:`facestream.llm.kv_cache`) is allocated once, sized ``max_batch x max_seq_len``, and
reused.

Which requests are refused, queued, shed (``stats["shed"]`` counts them) and admitted is
decided in :mod:`facestream.llm.admission`; slots, the loop and results are
:class:`facestream.llm.slots.SlotEngine`'s; the request and result types are in
:mod:`facestream.llm.requests`.  The model's hot path (prefill, decode_step) lives in
:mod:`facestream.llm.kv_cache`; token choice is :func:`sample` below, incremental
detokenisation with stop strings :class:`facestream.llm.detokenize.TextTail`.
"""

from __future__ import annotations

import math
import random

import torch

from facestream.errors import ConfigError
from facestream.llm.admission import shared_length, shares_prefix
from facestream.llm.decoder import StaticDecoder
from facestream.llm.detokenize import TextTail
from facestream.llm.kv_cache import (Chunk, LlamaParts, PrefixCopy, SlotKVCache, embed_prompt,
                                     prefill)
from facestream.llm.requests import GenerationRequest
from facestream.llm.slots import Running, SlotEngine, check_sizes


class Engine(SlotEngine):
    """Continuous-batching generator over a transformers LLaMA-architecture model (a
    :class:`~facestream.llm.requests.GenerationBackend`; the queue, slots and loop are
    :class:`~facestream.llm.slots.SlotEngine`'s).

    ``device``/``dtype`` default to the model's; if given, the model is moved there.
    ``tokenizer`` may be None (token ids only: results have empty text and requests may not
    use stop strings).  ``prefill_chunk``: most prompt positions prefilled per step (0:
    whole prompts).  ``pack_prefill`` False runs each request's prefill chunk as a forward of
    its own (the one-by-one baseline the benchmark compares against).  ``cuda_graphs``: on
    CUDA, replay the decode step from CUDA graphs (setting ``llm_cuda_graphs``); no effect
    elsewhere.  ``packed_weights``: on CPU in fp32, the output head runs on a copy of
    its weight reordered for oneDNN (:mod:`facestream.llm.packed`: faster for a batch, at
    the cost of that weight's memory twice); no effect elsewhere."""

    def __init__(self, model, tokenizer, *, max_batch: int, max_seq_len: int,
                 queue_size: int = 256, image_token_id: int | None = None,
                 prefix_ids: tuple[int, ...] = (), prefill_chunk: int = 512,
                 pack_prefill: bool = True, device=None, dtype=None,
                 cuda_graphs: bool = True, packed_weights: bool = True) -> None:
        check_sizes(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size)
        if prefill_chunk < 0:
            raise ConfigError(f"LLM engine: prefill_chunk={prefill_chunk}; need >= 0 "
                              "(0 = whole prompts); fix llm_prefill_chunk")
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        if (param.device, param.dtype) != (self.device, self.dtype):
            model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self._parts = LlamaParts.from_model(model, max_seq_len=max_seq_len,
                                            packed=packed_weights)
        super().__init__(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size,
                         vocab=self._parts.vocab, hidden=self._parts.hidden,
                         image_token_id=image_token_id, has_tokenizer=tokenizer is not None,
                         eos=_eos_ids(model, tokenizer))
        self._tokenizer = tokenizer
        self._cache = SlotKVCache.allocate(self._parts, slots=max_batch,
                                           max_seq_len=max_seq_len, device=self.device,
                                           dtype=self.dtype)
        self._prefill_chunk = prefill_chunk
        self._pack_prefill = pack_prefill
        self._prefilling: list[int] = []    # slots whose prompt is not all in the cache, FIFO
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
            prefill(self._parts, prefix, embeds, [Chunk(slot=0, start=0, length=len(ids))])
        return prefix

    def _admit(self) -> list[tuple[int, str]]:
        """Admit queued requests into free slots, run this step's prefill chunks, and sample
        the first tokens of the requests whose prompt is now complete (one host sync)."""
        for slot, queued in self._take_queued():
            request = queued.request
            generator = None
            if request.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(request.seed if request.seed is not None
                                      else random.getrandbits(63))
            tail = (TextTail(self._tokenizer, request.stop, include_stop=request.include_stop)
                    if self._tokenizer else None)
            self._slots[slot] = Running(queued, 0, tail, generator)
            self._prefilling.append(slot)
        chunks, copies, embeds = self._plan()
        if not chunks:
            return []
        groups = ([(chunks, copies, embeds)] if self._pack_prefill else
                  [([c], [p for p in copies if p.slot == c.slot], [e])
                   for c, e in zip(chunks, embeds)])
        logits = torch.cat([prefill(self._parts, self._cache, torch.cat(e), c, copies=p)
                            for c, p, e in groups])                 # [len(chunks), V]
        done = [j for j, c in enumerate(chunks)
                if c.start + c.length == len(self._slots[c.slot].queued.request.prompt_ids)]
        self._count(prefill_tokens=sum(c.length for c in chunks), prefix_hits=len(copies),
                    shared_prefix_tokens=sum(p.length for p in copies
                                             if p.source is self._cache))
        if not done:
            return []
        slots = [chunks[j].slot for j in done]
        self._prefilling = [b for b in self._prefilling if b not in slots]
        return self._sample(slots, logits[torch.tensor(done, device=self.device)])

    def _plan(self) -> tuple[list[Chunk], list[PrefixCopy], list[torch.Tensor]]:
        """This step's prefill: chunks of the prompts in ``_prefilling``, oldest first, within
        the ``prefill_chunk`` budget; the prefixes copied into requests that start now; each
        chunk's embeddings [length, hidden].  Advances each planned slot's ``length``."""
        budget = self._prefill_chunk or math.inf
        chunks: list[Chunk] = []
        copies: list[PrefixCopy] = []
        embeds: list[torch.Tensor] = []
        for order, slot in enumerate(self._prefilling):
            if budget <= 0:
                break
            running = self._slots[slot]
            request = running.queued.request
            start = running.length
            if start == 0:                  # nothing in the slot yet: start from a prefix?
                copy = self._prefix_copy(slot, donors=self._prefilling[:order])
                if copy is not None:
                    copies.append(copy)
                    start = copy.length
            length = int(min(len(request.prompt_ids) - start, budget))
            chunks.append(Chunk(slot=slot, start=start, length=length))
            embeds.append(self._embed(request, start, start + length))
            running.length = start + length
            budget -= length
        return chunks, copies, embeds

    def _prefix_copy(self, slot: int, *, donors: list[int]) -> PrefixCopy | None:
        """The longest prefix the request in ``slot`` can copy instead of prefilling (the
        static one on a tie): the static prefix, or the prompt prefix it shares with a
        request carrying the same visual tokens that is decoding or is among ``donors``
        (those ahead of it in ``_prefilling``); None: none.

        A donor ahead has its whole prompt in the cache by the time this step's forward
        copies from it: the budget goes to the requests in order, so it reaches this one
        only after each one ahead got the rest of its prompt (a follower waits, taking no
        budget, until its donor has prefilled past the shared part)."""
        request = self._slots[slot].queued.request
        ids = request.prompt_ids
        candidates = []
        if shares_prefix(ids, self._prefix_ids):
            candidates.append(PrefixCopy(self._prefix, 0, slot, len(self._prefix_ids)))
        for b, other in enumerate(self._slots):
            if request.visual is None or other is None \
                    or other.queued.request.visual is not request.visual \
                    or not (other.tokens or b in donors):
                continue
            length = shared_length(ids, other.queued.request.prompt_ids,
                                   image_token_id=self._image_token_id)
            if length:
                candidates.append(PrefixCopy(self._cache, b, slot, length))
        return max(candidates, key=lambda c: c.length, default=None)

    def _embed(self, request: GenerationRequest, start: int, end: int) -> torch.Tensor:
        """Embeddings of prompt positions ``start..end-1``, with the visual rows of the
        placeholders among them spliced in: [end - start, hidden]."""
        ids, visual = request.prompt_ids, request.visual
        if visual is not None:
            first = ids[:start].count(self._image_token_id)
            visual = visual[first:first + ids[start:end].count(self._image_token_id)]
        return embed_prompt(self._parts, ids[start:end], visual,
                            image_token_id=self._image_token_id, device=self.device)

    def _closed(self) -> None:
        self._prefilling = []

    def _decode(self, active: list[int]) -> list[tuple[int, str]]:
        """One token for every running slot through the static step (slots ``0..bucket-1``;
        the others — free, or still being prefilled — are parked and ignored); greedy rows
        are chosen on the device, and the host reads the chosen tokens once (to accept
        them)."""
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
