"""Where events go in embedded mode: a JSON Lines file, one event per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


class JsonlSink:
    """Appends events to ``path`` (truncated on open).  Each :meth:`write` is flushed, so
    a crash loses at most the batch being written.  Not thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")
        self.count = 0

    def write(self, batch: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(event, separators=(",", ":"), ensure_ascii=False) for event in batch]
        if lines:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            self.count += len(lines)

    def close(self) -> None:
        self._fh.close()
