"""Where events go: a JSONL file (embedded mode), Redis Streams (the workers), an annotated
video, and the reader behind ``facestream events tail``."""
