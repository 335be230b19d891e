"""Getting video in: what a source is and how it is opened and reconnected (``sources``),
GOP chunks on the wire (``chunks``), the chunk publisher (``publisher``) and the stream
registry (``registry``)."""
