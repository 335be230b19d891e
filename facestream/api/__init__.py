"""``facestream serve``: the operators' HTTP API and web console (docs/API.md).

In the order a request meets them:

* :mod:`facestream.api.app` — the app factory, health and metrics routes, the error shape,
  the console's files, and :func:`~facestream.api.app.serve` (uvicorn);
* :mod:`facestream.api.shared` — the error type, URL redaction, the bearer token check;
* :mod:`facestream.api.streams` — the stream registry (the same compacted topic as
  ``facestream streams``) with the live status from Redis, and snapshots;
* :mod:`facestream.api.feed` — events from the Redis streams, as JSON pages, as Server-Sent
  Events, and folded into tracks with their timelines;
* ``console/`` — the web console: plain HTML, CSS and JavaScript, no build step, no CDN.
"""
