"""Stream checkpoints in Redis: what a worker needs to resume another worker's stream exactly.

After every batch of events is acknowledged by Redis, the worker saves, per stream it
touched, the stream's whole state (decoder position, tracker, open windows, description
memory) together with the Kafka offset of the next message to read, and only then commits
that offset.  A worker that takes the stream over loads the checkpoint, skips messages
before its offset (their events are already written), and goes on: track ids, windows and
so event ids come out as they would have without the move.

The state is pickled, and unpickling admits only facestream's own classes, numpy and a few
builtins, so a tampered key cannot run arbitrary code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

# 2: the stream's chunk order (facestream.workers.ordering) in its state;
# 3: the pickled classes moved (facestream.types, facestream.vision) and their modules with them;
# 4: streams carry their last checkpoint between GOPs (live sources' unfinished chunks);
# 5: windows carry a clip, streams the tracks' clips (facellava_video_window_s).
VERSION = 5
_ALLOWED_PREFIXES = ("facestream.", "numpy", "collections", "fractions", "builtins", "copyreg",
                     "_codecs")


@dataclass
class Checkpoint:
    version: int
    stream_id: str
    offset: int          # the next message of this stream's partition to process
    stream: Any          # the worker's per-stream object (decoder, state); None once ended


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "__main__" or not module.startswith(_ALLOWED_PREFIXES):
            raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}: not allowed")
        return super().find_class(module, name)


def dumps(checkpoint: Checkpoint) -> bytes:
    return pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)


def loads(blob: bytes) -> Checkpoint | None:
    """The checkpoint, or None if it is unreadable or from another version (then the stream
    restarts from its next keyframe chunk with fresh state)."""
    try:
        checkpoint = _Restricted(io.BytesIO(blob)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.version != VERSION:
        return None
    return checkpoint
