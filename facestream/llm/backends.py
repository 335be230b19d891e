"""The one place that chooses where the LLM runs: in this process (torch or llama.cpp) or at
an endpoint.

Both language stages (:mod:`facestream.llm.smollm`, :mod:`facestream.llm.facellava`) get
their :class:`~facestream.llm.requests.GenerationBackend` from :func:`make_engine`.  Importing
this module imports no torch; the backend chosen is imported when it is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facestream.llm.requests import GenerationBackend

if TYPE_CHECKING:
    import torch


def make_engine(*, endpoint: str, max_batch: int, max_seq_len: int, model=None,
                tokenizer=None, gguf: Path | None = None, threads: int = 0,
                embedding: torch.Tensor | None = None,
                image_token_id: int | None = None, prefix_ids: tuple[int, ...] = (),
                prefill_chunk: int = 512, queue_size: int = 256, timeout_s: float = 120.0,
                max_in_flight: int = 8, cuda_graphs: bool = True,
                draft_tokens: int = 0) -> GenerationBackend:
    """The LLM behind a language stage.

    ``endpoint`` set (``llm_endpoint``): a :class:`~facestream.llm.remote.RemoteEngine` for
    that server, with ``timeout_s`` and ``max_in_flight``; ``embedding`` is the model's input
    embedding table [vocab, hidden], needed only for requests with visual tokens (marked by
    ``image_token_id``); ``model`` and ``tokenizer`` are not used.  ``endpoint`` empty: the
    in-process :class:`~facestream.llm.engine.Engine` over ``model`` and ``tokenizer``, with
    ``max_batch`` x ``max_seq_len`` cache slots, ``queue_size``, ``image_token_id``, the
    shared prefix ``prefix_ids``, at most ``prefill_chunk`` prompt positions prefilled per
    step (0: whole prompts) and ``cuda_graphs`` (CUDA only); or, given ``gguf`` (a GGUF file)
    instead of ``model``, the in-process :class:`~facestream.llm.llamacpp.LlamaCppEngine` on
    that file with ``threads`` and ``draft_tokens`` (speculative tokens per step, drafted from
    its recent answers; 0: none) (text prompts only; no torch).  Not started; blocking (the
    engine allocates its cache and
    computes the prefix)."""
    if endpoint:
        from facestream.llm.remote import RemoteEngine

        return RemoteEngine(endpoint, embedding=embedding, image_token_id=image_token_id,
                            timeout_s=timeout_s, max_in_flight=max_in_flight)
    if gguf is not None:
        from facestream.llm.llamacpp import LlamaCppEngine

        return LlamaCppEngine(gguf, max_batch=max_batch, max_seq_len=max_seq_len,
                              queue_size=queue_size, threads=threads, prefix_ids=prefix_ids,
                              draft_tokens=draft_tokens)
    from facestream.llm.engine import Engine

    return Engine(model, tokenizer, max_batch=max_batch, max_seq_len=max_seq_len,
                  queue_size=queue_size, image_token_id=image_token_id, prefix_ids=prefix_ids,
                  prefill_chunk=prefill_chunk, cuda_graphs=cuda_graphs)
