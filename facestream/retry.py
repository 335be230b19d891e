"""Bounded exponential backoff with jitter, injected where something may be retried."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Backoff:
    """Delays for up to ``attempts`` retries (None: without end): base·2^k capped at
    ``maximum``, ±``jitter``."""

    attempts: int | None
    base_s: float
    maximum_s: float
    jitter: float = 0.2
    seed: int | None = None

    def delays(self) -> Iterator[float]:
        rng = random.Random(self.seed)
        for k in range(self.attempts) if self.attempts is not None else itertools.count():
            delay = min(self.maximum_s, self.base_s * (2 ** min(k, 64)))
            yield max(0.0, delay * (1 + rng.uniform(-self.jitter, self.jitter)))
