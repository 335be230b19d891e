"""Where events go: a JSONL file (embedded mode), Redis Streams (the workers), optionally
also a Kafka topic and webhooks (:mod:`facestream.sinks.fanout`), an annotated video, and
the reader behind ``facestream events tail``."""
