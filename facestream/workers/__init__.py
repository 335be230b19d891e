"""The stages put together: per-track windows, the change-triggered scheduler, the pipeline
from frames to events, the composition root (``compose``), the embedded mode and the Kafka
worker with its checkpoints, ordering policy, dead letters and metrics."""
