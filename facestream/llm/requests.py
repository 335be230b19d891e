"""What the LLM tier is asked and what it answers, whoever generates the tokens.

:class:`GenerationRequest` (one prompt, with its visual tokens) and
:class:`GenerationResult` (what came of it) are the same for the in-process engine
(:class:`facestream.llm.engine.Engine`) and the remote client
(:class:`facestream.llm.remote.RemoteEngine`); :class:`GenerationBackend` is the interface
both implement, and :func:`facestream.llm.backends.make_engine` picks one.
:class:`RequestError` and :class:`QueueFull` are the errors a request can meet at submit.

Pure Python: nothing here imports torch (``visual`` holds a tensor, but only its ``dim`` and
``shape`` are read).
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from facestream.errors import InputError

if TYPE_CHECKING:
    import torch


class RequestError(InputError, ValueError):
    """A generation request that cannot be run as given (checked once, at submit)."""


class QueueFull(InputError):
    """The queue is full of urgent requests, so nothing could be shed to make room."""


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """One prompt to complete.  ``prompt_ids`` may hold the engine's image placeholder id,
    already expanded to one placeholder per visual token; ``visual`` holds those tokens'
    embeddings ``[n_placeholders, hidden]``, spliced in order.  ``ignore_eos`` keeps
    generating past end-of-sequence tokens (benchmarks use it for equal work);
    ``include_stop`` keeps the stop string that ended the text in it (vLLM's
    ``include_stop_str_in_output``: a sentence keeps its full stop).  ``top_p`` < 1 samples
    (with ``temperature`` > 0) from the smallest set of most likely tokens whose
    probabilities reach ``top_p``; greedy decoding ignores it."""

    request_id: str
    prompt_ids: tuple[int, ...]
    visual: torch.Tensor | None = None      # [n_placeholders, hidden]
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    temperature: float = 0.0                # 0 = greedy
    top_p: float = 1.0                      # 1 = every token
    seed: int | None = None
    urgent: bool = False
    ignore_eos: bool = False
    include_stop: bool = False

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise RequestError(f"request {self.request_id}: prompt_ids is empty; "
                               "pass at least one token id")
        if self.max_new_tokens < 1:
            raise RequestError(f"request {self.request_id}: max_new_tokens="
                               f"{self.max_new_tokens}; must be >= 1")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise RequestError(f"request {self.request_id}: temperature={self.temperature}; "
                               "must be a finite number >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"request {self.request_id}: top_p={self.top_p}; must lie in "
                               "(0, 1] (1 = every token)")
        if any(not s for s in self.stop):
            raise RequestError(f"request {self.request_id}: empty stop string; "
                               "stop strings must be non-empty")
        if self.seed is not None and not -2 ** 63 <= self.seed < 2 ** 64:
            raise RequestError(f"request {self.request_id}: seed={self.seed}; expected an "
                               "integer in [-2**63, 2**64)")
        if self.visual is not None and self.visual.dim() != 2:
            raise RequestError(f"request {self.request_id}: visual has shape "
                               f"{tuple(self.visual.shape)}; expected [n_tokens, hidden]")


@dataclass(frozen=True)
class GenerationResult:
    """What came of one request.  ``token_ids`` are the generated ids (an end-of-sequence
    token included, as ``generate`` returns it); ``text`` decodes them without special
    tokens and ends before the first stop string.  Times are seconds of
    ``time.perf_counter`` from ``submit``; a shed request has ``ttft_s = nan``."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str                      # "stop" | "length" | "eos" | "shed"
    prompt_tokens: int
    ttft_s: float
    latency_s: float


def check_splice(request: GenerationRequest, *, image_token_id: int | None,
                 hidden: int | None, what: str) -> None:
    """Raise RequestError unless the request's placeholders and visual tokens agree: one
    visual row per placeholder, rows ``hidden`` wide (``what`` names that width's owner;
    None: width not checked)."""
    rid, ids = request.request_id, request.prompt_ids
    placeholders = ids.count(image_token_id) if image_token_id is not None else 0
    given = 0 if request.visual is None else request.visual.shape[0]
    if placeholders != given:
        raise RequestError(f"request {rid}: prompt has {placeholders} image placeholders "
                           f"but {given} visual tokens were given")
    if request.visual is not None and hidden is not None and request.visual.shape[1] != hidden:
        raise RequestError(f"request {rid}: visual tokens have hidden size "
                           f"{request.visual.shape[1]} but {what} is {hidden}; "
                           f"project them to {hidden}")


class GenerationBackend(Protocol):
    """The interface the in-process :class:`~facestream.llm.engine.Engine` and the remote
    :class:`~facestream.llm.remote.RemoteEngine` share; the language stages hold one."""

    def start(self) -> None:
        """Get ready to serve (the engine's loop thread; the endpoint's check).  Optional:
        ``generate`` works without it."""

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; returns a future of its :class:`GenerationResult`.
        Thread-safe, non-blocking.  Raises RequestError for a request that can never run."""

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run ``requests`` to completion; results in request order.  Blocking."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters (at least queued, running, shed, tokens, prefill_tokens).  Thread-safe."""

    def close(self) -> None:
        """Stop serving; requests not yet run are cancelled.  Blocking."""
