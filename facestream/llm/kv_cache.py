"""A preallocated slot KV cache and the two pure functions that run a LLaMA stack on it.

The cache holds one row ("slot") per running request: ``k`` and ``v`` are each
``[layers, slots, kv_heads, max_seq_len, head_dim]``, allocated once and overwritten in
place.  A slot's valid length lives with the caller (the engine), never in the tensors.

* :func:`prefill` runs prompt chunks of several requests packed into one sequence (each
  after its slot's past: positions already prefilled, or a prefix copied in layer by layer)
  and returns the logits of each chunk's last position;
* :func:`decode_step` runs one new token for each of the slots ``0..n-1`` at once, every
  slot at its own position, attending only to its own valid positions.  Its shapes depend
  only on ``n`` and the key span, and it never reads device values on the host, so a
  CUDA graph can capture it (:mod:`facestream.llm.decoder`).

Both use the model's own modules (embedding, projections, norms, MLP, lm_head) and its own
rotary table, and mirror transformers' Llama numerics (RMSNorm in fp32, cos/sin cast to the
model dtype, grouped-query attention on the key/value heads, scale ``head_dim ** -0.5``), so
greedy tokens match ``generate`` in fp32.  They must run under ``torch.inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from facestream.errors import ConfigError
from facestream.llm import packed as packing


@dataclass(frozen=True)
class LlamaParts:
    """Read-only view of a ``LlamaForCausalLM``'s modules plus its rotary table.

    Holds references, not copies: the weights stay owned by the model."""

    embed: nn.Embedding
    layers: tuple[nn.Module, ...]       # LlamaDecoderLayer-like: self_attn, mlp, two norms
    norm: nn.Module
    lm_head: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    cos: torch.Tensor                   # [max_seq_len, head_dim], model dtype
    sin: torch.Tensor                   # [max_seq_len, head_dim], model dtype

    @classmethod
    def from_model(cls, model: nn.Module, *, max_seq_len: int,
                   packed: bool = False) -> LlamaParts:
        """Parts of a LLaMA-architecture causal LM (LLaMA, Vicuna, SmolLM2, Mistral without
        sliding window).  Raises ConfigError for anything else.  ``packed``: on CPU in
        fp32, the output head runs on a copy of its weight reordered for oneDNN
        (:mod:`facestream.llm.packed`, where it applies; the model is not changed)."""
        config = model.config
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, name) for name in needed) \
                or not hasattr(model, "lm_head"):
            raise ConfigError(f"LLM engine: expected a LLaMA-architecture causal LM "
                              f"(model.model.layers, lm_head), got {type(model).__name__}; "
                              "load the LLM with LlamaForCausalLM")
        if getattr(config, "sliding_window", None):
            raise ConfigError(f"LLM engine: sliding-window attention "
                              f"({config.sliding_window}) is not supported; use a model "
                              "with full attention")
        limit = getattr(config, "max_position_embeddings", max_seq_len)
        if max_seq_len > limit:
            raise ConfigError(f"LLM engine: max_seq_len={max_seq_len} exceeds the model's "
                              f"max_position_embeddings={limit}; lower llm_max_seq_len")
        n_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        weight = base.embed_tokens.weight
        positions = torch.arange(max_seq_len, device=weight.device)[None]
        with torch.inference_mode():
            # The model's own rotary module, so scaled RoPE variants come out as in HF.
            probe = torch.empty(1, device=weight.device, dtype=weight.dtype)
            cos, sin = base.rotary_emb(probe, positions)          # [1, S, head_dim] each
        lm_head = model.lm_head
        if packed and isinstance(lm_head, nn.Linear) and packing.usable(lm_head.weight):
            lm_head = packing.PackedLinear(lm_head)
        return cls(embed=base.embed_tokens, layers=tuple(base.layers), norm=base.norm,
                   lm_head=lm_head, n_heads=n_heads,
                   n_kv_heads=config.num_key_value_heads, head_dim=head_dim,
                   hidden=config.hidden_size, vocab=weight.shape[0],
                   cos=cos[0].contiguous(), sin=sin[0].contiguous())

    @property
    def packed(self) -> bool:
        """Whether the output head runs on a oneDNN-packed weight."""
        return isinstance(self.lm_head, packing.PackedLinear)


@dataclass(frozen=True)
class SlotKVCache:
    """Keys and values of ``slots`` sequences, preallocated.  Not thread-safe: one writer."""

    k: torch.Tensor                     # [layers, slots, kv_heads, max_seq_len, head_dim]
    v: torch.Tensor                     # same

    @classmethod
    def allocate(cls, parts: LlamaParts, *, slots: int, max_seq_len: int,
                 device: torch.device, dtype: torch.dtype) -> SlotKVCache:
        shape = (len(parts.layers), slots, parts.n_kv_heads, max_seq_len, parts.head_dim)
        with torch.inference_mode():
            return cls(k=torch.zeros(shape, device=device, dtype=dtype),
                       v=torch.zeros(shape, device=device, dtype=dtype))

    def copy_in(self, copy: PrefixCopy, *, layer: int) -> None:
        """Copy one layer of a prefix: the first ``copy.length`` positions of
        ``copy.source``'s slot ``copy.source_slot`` (``source`` may be this cache) into slot
        ``copy.slot``."""
        # k[layer, slot, :, :length]: [kv_heads, length, head_dim]
        self.k[layer, copy.slot, :, :copy.length].copy_(
            copy.source.k[layer, copy.source_slot, :, :copy.length])
        self.v[layer, copy.slot, :, :copy.length].copy_(
            copy.source.v[layer, copy.source_slot, :, :copy.length])


@dataclass(frozen=True)
class Chunk:
    """One request's share of a packed prefill: ``length`` prompt positions of ``slot``,
    from ``start`` on."""

    slot: int
    start: int
    length: int


@dataclass(frozen=True)
class PrefixCopy:
    """A prompt prefix already computed elsewhere: positions ``0..length-1`` of ``source``'s
    slot ``source_slot`` (the engine's static prefix cache, or another slot of the same
    cache) go into ``slot`` instead of being prefilled."""

    source: SlotKVCache
    source_slot: int
    slot: int
    length: int


def embed_prompt(parts: LlamaParts, ids: tuple[int, ...], visual: torch.Tensor | None, *,
                 image_token_id: int | None, device: torch.device) -> torch.Tensor:
    """Token embeddings with the rows at image placeholders replaced, in order, by
    ``visual`` (cast to the embedding dtype).  The caller has checked that the counts agree.
    Placeholder positions are found on the host, so there is no device sync.

    ids: T ints; visual: [n_placeholders, hidden] -> [T, hidden]"""
    at = [i for i, t in enumerate(ids) if t == image_token_id] if visual is not None else []
    tokens = torch.tensor([0 if t == image_token_id else t for t in ids], device=device)
    embeds = parts.embed(tokens)                                    # [T, hidden]
    if at:
        rows = torch.tensor(at, device=device)                     # [n_placeholders]
        embeds.index_copy_(0, rows, visual.to(device=device, dtype=embeds.dtype))
    return embeds


def prefill(parts: LlamaParts, cache: SlotKVCache, embeds: torch.Tensor,
            chunks: Sequence[Chunk], *, copies: Sequence[PrefixCopy] = ()) -> torch.Tensor:
    """Run prompt chunks of several slots through the stack, packed into one sequence:
    chunk ``j`` is the next ``chunks[j].length`` rows of ``embeds``, at positions
    ``start..start+length-1`` of its slot, and its keys and values are written there.
    Positions ``< start`` must hold the slot's past: prefilled before, or filled by
    ``copies``, which are applied layer by layer just before that layer's attention, so a
    prefix may come from a slot that this same call is computing.  Norms, projections and
    the MLP run on all rows at once; attention runs chunk by chunk over its own slot.

    embeds: [N, hidden] (N = the chunks' lengths summed) -> logits of each chunk's last
    position: [len(chunks), vocab]"""
    device = embeds.device
    positions = torch.tensor([p for c in chunks for p in range(c.start, c.start + c.length)],
                             device=device)                         # [N]
    cos = parts.cos[positions][None, None]                          # [1, 1, N, D]
    sin = parts.sin[positions][None, None]
    rows, masks, offset = [], [], 0
    for c in chunks:
        rows.append(slice(offset, offset + c.length))
        masks.append(_chunk_mask(c, device))
        offset += c.length
    x = embeds[None]                                                # [1, N, hidden]
    for i, layer in enumerate(parts.layers):
        q, k, v = _project(parts, layer, x, cos=cos, sin=sin)       # k, v: [1, KV, N, D]
        for c, at in zip(chunks, rows):
            cache.k[i, c.slot, :, c.start:c.start + c.length] = k[0, :, at]
            cache.v[i, c.slot, :, c.start:c.start + c.length] = v[0, :, at]
        for copy in copies:
            cache.copy_in(copy, layer=i)
        attended = torch.cat([                                      # [1, N, H * D]
            _attend(q[:, :, at], cache.k[i, c.slot:c.slot + 1, :, :c.start + c.length],
                    cache.v[i, c.slot:c.slot + 1, :, :c.start + c.length], mask)
            for c, at, mask in zip(chunks, rows, masks)], dim=1)
        x = _residual_and_mlp(layer, x, attended)
    last = torch.tensor([at.stop - 1 for at in rows], device=device)
    return parts.lm_head(parts.norm(x[0, last]))                    # [len(chunks), vocab]


def _chunk_mask(chunk: Chunk, device: torch.device) -> torch.Tensor | None:
    """[1, 1, T, start + T] causal mask of a chunk over its slot's past and itself; None
    with no past (the kernels' own causal mode does the same, faster)."""
    if chunk.start == 0:
        return None
    end = chunk.start + chunk.length
    positions = torch.arange(chunk.start, end, device=device)      # [T]
    keys = torch.arange(end, device=device)
    return (keys[None, :] <= positions[:, None])[None, None]


def decode_step(parts: LlamaParts, cache: SlotKVCache, tokens: torch.Tensor,
                positions: torch.Tensor, *, span: int) -> torch.Tensor:
    """One token for each slot ``0..n-1``: slot ``b`` reads ``tokens[b]`` at position
    ``positions[b]``, writes its key/value there and attends to positions ``0..positions[b]``.
    ``span`` (a host int) bounds the keys read, so the step does not sync to find it; a
    slot whose position is ``>= span`` writes its key/value but its output is meaningless.
    Unused slots may be fed any token at a position that holds nothing worth keeping.
    The mask is additive (0 / -inf in the cache's dtype, one row per slot), which fused
    attention kernels take; the CPU kernels turn a bool mask into the same one.

    tokens: [n] long, positions: [n] long -> logits: [n, vocab]"""
    n = tokens.shape[0]
    rows = torch.arange(n, device=tokens.device)
    cos = parts.cos[positions][:, None, None]                       # [n, 1, 1, D]
    sin = parts.sin[positions][:, None, None]
    keys = torch.arange(span, device=tokens.device)
    blocked = keys[None, :] > positions[:, None]                    # [n, span]
    mask = torch.zeros(blocked.shape, dtype=cache.k.dtype, device=tokens.device) \
        .masked_fill_(blocked, float("-inf"))[:, None, None]         # [n, 1, 1, span]
    x = parts.embed(tokens)[:, None]                                # [n, 1, hidden]
    for i, layer in enumerate(parts.layers):
        q, k, v = _project(parts, layer, x, cos=cos, sin=sin)       # k, v: [n, KV, 1, D]
        k_slots, v_slots = cache.k[i, :n], cache.v[i, :n]           # [n, KV, max_seq_len, D]
        k_slots[rows, :, positions] = k[:, :, 0]
        v_slots[rows, :, positions] = v[:, :, 0]
        x = _attend_and_mlp(layer, x, q, k_slots[:, :, :span], v_slots[:, :, :span], mask)
    return parts.lm_head(parts.norm(x[:, 0]))                       # [n, vocab]


def _project(parts: LlamaParts, layer: nn.Module, x: torch.Tensor, *, cos: torch.Tensor,
             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of one layer, rotated.  x: [B, T, hidden]; cos, sin:
    broadcastable to [B, H, T, D] -> q: [B, H, T, D], k, v: [B, KV, T, D]"""
    attn = layer.self_attn
    batch, n_tokens, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(batch, n_tokens, parts.n_heads, parts.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(batch, n_tokens, parts.n_kv_heads, parts.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(batch, n_tokens, parts.n_kv_heads, parts.head_dim).transpose(1, 2)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def _attend_and_mlp(layer: nn.Module, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rest of the layer.  x: [B, T, hidden]; q: [B, H, T, D]; keys, values:
    [B, KV, S, D]; mask: [B|1, 1, T, S] (:func:`_attend`'s) or None -> [B, T, hidden]"""
    return _residual_and_mlp(layer, x, _attend(q, keys, values, mask))


def _residual_and_mlp(layer: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The layer after attention.  x: [B, T, hidden]; attended: [B, T, H * D]
    -> [B, T, hidden]"""
    x = x + layer.self_attn.o_proj(attended)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention.  With a mask, the ``G`` query heads that share a key/value
    head become ``G`` extra query rows of it, so keys are never repeated (head ``h`` uses kv
    head ``h // G``, as transformers' ``repeat_kv`` does); without one (a prompt with no
    past, T == S) attention is causal.  The mask is bool (True = may attend) or additive
    (0 / -inf, q's dtype); with one query token it broadcasts over the ``G`` rows as is,
    so no copy of it is made per layer.

    q: [B, H, T, D]; k, v: [B, KV, S, D]; mask: [B|1, 1, T, S] or None -> [B, T, H * D]"""
    batch, n_heads, n_tokens, head_dim = q.shape
    n_kv, span = k.shape[1], k.shape[2]
    groups = n_heads // n_kv
    scale = head_dim ** -0.5
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                             enable_gqa=groups > 1)
        return out.transpose(1, 2).reshape(batch, n_tokens, n_heads * head_dim)
    q = q.reshape(batch, n_kv, groups * n_tokens, head_dim)         # [B, KV, G*T, D]
    if n_tokens > 1:                # row g*T + t of a kv head is its query head g's token t
        mask = mask[:, :, None].expand(mask.shape[0], 1, groups, n_tokens, span)
        mask = mask.reshape(mask.shape[0], 1, groups * n_tokens, span)  # [B|1, 1, G*T, S]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.reshape(batch, n_heads, n_tokens, head_dim).transpose(1, 2) \
              .reshape(batch, n_tokens, n_heads * head_dim)
