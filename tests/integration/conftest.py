"""Fixtures of the integration tests: the real broker and Redis that the test command
starts (`deploy/dev-services up`), and per-test topics, group and Redis keys."""

from __future__ import annotations

import uuid

import pytest

from facestream.config import Settings
from tests.integration.helpers import BOOTSTRAP, REDIS_URL, reachable


@pytest.fixture(scope="module", autouse=True)
def services():
    redis_hostport = REDIS_URL.split("//", 1)[1].split("/", 1)[0]
    missing = [name for name, hp in (("Kafka", BOOTSTRAP), ("Redis", redis_hostport))
               if not reachable(hp)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable: start them with "
                    "`deploy/dev-services up` (./dev test does)")


@pytest.fixture
def isolated():
    """Settings with this test's own topics, group and Redis keys, and the same as
    ``FACESTREAM_*`` variables for the processes a test starts."""
    tag = uuid.uuid4().hex[:8]
    overrides = {"kafka_bootstrap": BOOTSTRAP, "redis_url": REDIS_URL,
                 "video_topic": f"it-{tag}.video", "dlq_topic": f"it-{tag}.dlq",
                 "consumer_group": f"it-{tag}", "events_stream": f"it:{tag}:events",
                 "checkpoint_prefix": f"it:{tag}:checkpoint", "metrics_port": 0,
                 "stream_status_prefix": f"it:{tag}:stream", "registry_topic": f"it-{tag}.streams",
                 "supervisor_metrics_port": 0,
                 "describe": False}
    env = {f"FACESTREAM_{k.upper()}": str(v) for k, v in overrides.items()}
    return Settings.load(overrides), env
