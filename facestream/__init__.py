"""facestream: face understanding for live video.

Stages follow a frame: ``ingest`` (sources, demux) → ``workers`` (decode, faces, tracks,
windows, events) → ``encoder`` (visual nets) → ``llm`` (language). ``facestream analyze``
runs them in one process; the Kafka workers run the same stages.
"""

__version__ = "0.1.0"
