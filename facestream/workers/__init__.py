"""Per-stream work: decode, faces, tracks, windows, events and their sinks."""
