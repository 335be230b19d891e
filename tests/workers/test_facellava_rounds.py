"""The facellava profile's vision runs once per worker round across streams: a worker that
holds three streams (each on its own partition, so every round takes a chunk of each) runs
each tower's vision path once per round over every picked window of every stream, batched
([W, ...]), then hands the engine one batch of requests; and each stream's events are those
it gets when a worker holds it alone.  In-memory transports (tests/helpers.py), real video
of three different faces, a tiny random Face-LLaVA in the released checkpoint layout (the
7B checkpoint cannot be fetched here), with the vision path in torch or exported to ONNX
Runtime."""

from __future__ import annotations

import av
import numpy as np
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import EndOfStream, gop_chunks
from facestream.llm import facellava
from facestream.scenes import face_patch, load_rgb, moving_faces, write_clip
from facestream.vision.faces import FaceAnalyzer
from facestream.workers.compose import Models
from tests.helpers import comparable, one_poll_worker
from tests.tiny_facellava import write_tiny_checkpoint

# One posed face per stream (the sample set's photos), so no two streams' windows agree.
PHOTOS = {"cam-a": "0-f1-su-ph.jpg", "cam-b": "0-f15-hao-ph.jpg", "cam-c": "15-f13-anc-ph.jpg"}
TASKS = "expression,age"          # one video task, one image task: both towers run


@pytest.fixture(scope="module")
def stream_messages(sample, tmp_path_factory) -> dict[str, list]:
    """Per stream: the chunks of a 3 s clip of its face swaying, then its end marker."""
    faces = FaceAnalyzer()
    folder = tmp_path_factory.mktemp("streams")
    messages = {}
    try:
        for stream_id, photo_name in PHOTOS.items():
            photo = load_rgb(sample(photo_name))
            patch = face_patch(photo, tuple(int(v) for v in faces(photo).boxes[0]), 150)
            frames, _ = moving_faces([patch], [lambda t: (160 + 20 * np.sin(2 * t), 120.0)],
                                     width=320, height=240, seconds=3.0, fps=25)
            path = write_clip(folder / f"{stream_id}.mp4", frames, fps=25)
            with av.open(str(path)) as container:
                chunks = list(gop_chunks(container, stream_id=stream_id))
            messages[stream_id] = [*chunks, EndOfStream(stream_id, chunks[-1].seq)]
    finally:
        faces.close()
    return messages


@pytest.fixture(scope="module")
def cache(settings, tmp_path_factory):
    """A cache folder of its own (exported vision paths go there) with the real models."""
    folder = tmp_path_factory.mktemp("cache")
    (folder / "models").symlink_to(settings.cache_dir / "models")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("facellava") / "tiny-facellava",
                                 tokenizer="sentencepiece")


@pytest.fixture
def calls(monkeypatch) -> list:
    """In order: ("video" | "image", pixels shape) per call of a vision path (torch or an
    exported backend), ("generate", request ids) per call of the engine."""
    from facestream.llm.engine import Engine

    log: list = []

    def recording(make):
        def made(*args, **kwargs):
            run = make(*args, **kwargs)

            def recorded(pixels, landmarks):
                log.append(("video" if pixels.ndim == 5 else "image", pixels.shape))
                return run(pixels, landmarks)
            return recorded
        return made

    monkeypatch.setattr(facellava, "torch_vision", recording(facellava.torch_vision))
    monkeypatch.setattr(facellava, "backend_vision", recording(facellava.backend_vision))
    real_generate = Engine.generate
    monkeypatch.setattr(Engine, "generate", lambda self, requests: log.append(
        ("generate", [r.request_id for r in requests])) or real_generate(self, requests))
    return log


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_each_round_runs_each_tower_once_over_the_windows_of_every_stream(
        backend, stream_messages, checkpoint, cache, calls):
    profile = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
               "facellava_tasks": TASKS, "facellava_max_new_tokens": 4,
               "facellava_vision_backend": backend, "cache_dir": str(cache)}
    models = Models.load(Settings.load({**profile, "describe": False}))
    run = dict(fps=5.0, partition_per_stream=True, **profile)
    _, together, dlq, _, _ = one_poll_worker(
        [m for messages in stream_messages.values() for m in messages], models, **run)
    assert not dlq.sent
    recorded = list(calls)

    # Every engine call follows one call of each tower over exactly its windows (2 tasks
    # per window), and nothing else calls a tower.
    engine_calls = [i for i, (what, _) in enumerate(recorded) if what == "generate"]
    assert engine_calls
    start = 0
    for i in engine_calls:
        windows = len(recorded[i][1]) // 2
        assert sorted(recorded[start:i]) == [("image", (windows, 3, 224, 224)),
                                             ("video", (windows, 3, 8, 224, 224))], recorded
        start = i + 1
    assert start == len(recorded)
    streams_per_call = [len({rid.split("/")[0] for rid in ids})
                        for what, ids in recorded if what == "generate"]
    assert streams_per_call[0] == len(PHOTOS), streams_per_call     # every stream's new track

    analysis = [e for e in together if e["type"] == events.FACE_ANALYSIS]
    assert {e["data"]["stream_id"] for e in analysis} == set(PHOTOS)
    assert all(set(e["data"]["answers"]) == {"expression", "age"} for e in analysis)
    assert {e["data"]["model"]["components"]["vision_backend"] for e in analysis} == {backend}
    for stream_id, messages in stream_messages.items():
        _, alone, _, _, _ = one_poll_worker(messages, models, **run)
        assert [comparable(e) for e in together if e["data"].get("stream_id") == stream_id] \
            == [comparable(e) for e in alone], stream_id
