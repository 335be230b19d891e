"""The engine's decode step with static shapes, replayed from CUDA graphs on CUDA.

A step decodes the slots ``0..rows-1`` of the KV cache, where ``rows`` is the smallest
*batch bucket* (1, 2, 4, 8, ..., and ``max_batch`` itself) that covers the highest running
slot, and reads the first ``span`` key positions, where ``span`` is the smallest *span
bucket* (16, 32, 64, 128, then multiples of 128, and the cache length) that covers the
longest running context.  So a batch that grows, shrinks and gets longer goes through a
handful of shapes, and reads at most 127 key positions more than it needs.

The step's inputs live in persistent device tensors, updated in place: the token and the
position each slot is fed, and whether it is live (its position advances after a step).
The host writes them only when requests join or leave (:meth:`StaticDecoder.place`); a
step builds no tensor from host data.  Slots that are not running are *parked*: fed token
0 at position ``max_seq_len - 1``, a position no request ever writes (prompt + answer fit
in ``max_seq_len`` and the last answer token is never fed back), so a parked row leaves
every position a request uses as it was, in a slot being prefilled too.

On CUDA (``cuda_graphs``), each (rows, span) step is captured in a ``torch.cuda.CUDAGraph``
on first use, after a warm-up on a side stream, and replayed: one launch instead of a few
thousand.  The graphs share one memory pool; their logits are static tensors, overwritten
by the next replay of the same graph.  Warm-up runs write the same keys and values that the
replay writes again, so capturing mid-generation changes nothing.
"""

from __future__ import annotations

import torch

from facestream.llm.kv_cache import LlamaParts, SlotKVCache, decode_step

MIN_SPAN = 16           # smallest span bucket: keeps the additive mask's rows aligned
SPAN_STEP = 128         # span buckets above this are its multiples
WARMUP_STEPS = 3        # eager runs on a side stream before a capture (cuBLAS, allocator)


def batch_bucket(rows: int, max_batch: int) -> int:
    """The smallest of 1, 2, 4, ... and ``max_batch`` that is >= ``rows`` (<= max_batch)."""
    return min(max_batch, 1 << (rows - 1).bit_length())


def span_bucket(span: int, limit: int) -> int:
    """The smallest of 16, 32, 64, 128, 256, 384, ... and ``limit`` (the cache length)
    that is >= ``span`` (<= limit)."""
    if span > SPAN_STEP:
        return min(limit, -(-span // SPAN_STEP) * SPAN_STEP)
    return min(limit, max(MIN_SPAN, 1 << (span - 1).bit_length()))


class StaticDecoder:
    """Persistent step inputs over one slot cache, and the step's CUDA graphs.  Not
    thread-safe: driven by the engine's step.

    ``cuda_graphs`` is honoured on a CUDA cache only; elsewhere every step runs eagerly.
    On CUDA the attribute may be switched between steps (a benchmark compares both)."""

    def __init__(self, parts: LlamaParts, cache: SlotKVCache, *, max_batch: int,
                 max_seq_len: int, cuda_graphs: bool) -> None:
        self._parts, self._cache = parts, cache
        self._max_batch = max_batch
        self.parking = max_seq_len - 1
        self.cuda_graphs = cuda_graphs and cache.k.device.type == "cuda"
        device = cache.k.device
        with torch.inference_mode():
            self._tokens = torch.zeros(max_batch, dtype=torch.long, device=device)
            self._positions = torch.full((max_batch,), self.parking, dtype=torch.long,
                                         device=device)
            self._live = torch.zeros(max_batch, dtype=torch.long, device=device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far (one per (rows, span) bucket used)."""
        return len(self._graphs)

    def place(self, slots: list[int], tokens: list[int], positions: list[int | None]) -> None:
        """Feed ``slots[i]`` token ``tokens[i]`` at ``positions[i]`` from the next step on
        and advance it after each step; a position None parks the slot.  One host-to-device
        copy; call it only when requests join or leave."""
        live = [int(p is not None) for p in positions]
        at = [self.parking if p is None else p for p in positions]
        table = torch.tensor([slots, tokens, at, live], dtype=torch.long,
                             device=self._tokens.device)                       # [4, k]
        for target, values in zip((self._tokens, self._positions, self._live), table[1:]):
            target.index_copy_(0, table[0], values)

    def step(self, *, rows: int, span: int) -> torch.Tensor:
        """Logits of one step over the first ``batch_bucket(rows)`` slots, keys up to
        ``span_bucket(span)``: [bucket, vocab] (on CUDA with graphs, the graph's static
        output: read it before the next step)."""
        bucket = batch_bucket(rows, self._max_batch)
        span = span_bucket(span, self._cache.k.shape[3])
        if not self.cuda_graphs:
            return self._run(bucket, span)
        captured = self._graphs.get((bucket, span))
        if captured is None:
            captured = self._graphs[(bucket, span)] = self._capture(bucket, span)
        graph, logits = captured
        graph.replay()
        return logits

    def advance(self, chosen: torch.Tensor) -> None:
        """After a step: feed each row its chosen token next, one position further for the
        live ones.  chosen: [bucket] long (parked rows' entries are ignored)."""
        bucket = chosen.shape[0]
        self._tokens[:bucket].copy_(chosen)
        self._positions[:bucket].add_(self._live[:bucket])

    def _run(self, bucket: int, span: int) -> torch.Tensor:
        return decode_step(self._parts, self._cache, self._tokens[:bucket],
                           self._positions[:bucket], span=span)         # [bucket, V]

    def _capture(self, bucket: int, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream, then capture one step (the torch docs' recipe)."""
        side = torch.cuda.Stream(device=self._cache.k.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._run(bucket, span)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loop thread captures while other threads (the vision path) may
        # be using the GPU; only this thread's capture-unsafe calls are refused.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._run(bucket, span)
        return graph, logits
