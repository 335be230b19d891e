"""facestream: face understanding for live video.

Stages follow a frame: ``ingest`` (sources, chunks) → ``vision`` (decode, faces, tracks) →
``encoder`` (visual nets) → ``llm`` (language) → ``sinks`` (events out), put together by
``workers`` (windows, scheduling, the embedded mode and the Kafka worker).  Each package
imports only those before it; ``types`` holds the data that crosses between them.
``facestream analyze`` runs every stage in one process; the Kafka workers run the same stages.
"""

__version__ = "0.1.0"
