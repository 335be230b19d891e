"""Static group membership (``FACESTREAM_KAFKA_GROUP_INSTANCE_ID``; the chart's
``workers.staticMembership`` sets it to the pod name) against the real broker: a worker that
restarts under the same instance id within the session timeout gets its partitions back
without the group rebalancing, so the other workers keep theirs and go on; without an
instance id (the control) the same restart rebalances the group."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from tests.integration.helpers import wait

pytestmark = pytest.mark.integration

PARTITIONS = 6


def _value(metrics, name: str) -> float:
    """A sample of the worker's /metrics exposition, as a scraper reads it."""
    for line in metrics.exposition().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_a_worker_restarted_under_its_instance_id_gets_its_partitions_back_without_a_rebalance(
        isolated, models, static):
    from kafka.admin import KafkaAdminClient, NewTopic

    from facestream.workers.worker import Worker

    settings, _ = isolated
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(settings.video_topic, PARTITIONS, 1)])
    finally:
        admin.close()
    running: list[tuple[Worker, threading.Thread]] = []

    def start(name: str) -> Worker:
        worker = Worker(replace(settings, kafka_group_instance_id=name if static else "",
                                kafka_session_timeout_ms=60_000), models=models)
        thread = threading.Thread(target=worker.run, name=f"worker-{name}", daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    def held(worker: Worker) -> float:
        return _value(worker.metrics, "facestream_assigned_partitions")

    def rebalances(worker: Worker) -> float:
        return _value(worker.metrics, "facestream_rebalances_total")

    try:
        steady = start("b")              # first in: the group's leader
        wait(lambda: held(steady) == PARTITIONS, 60, "the first worker to hold every partition")
        restarted = start("a")
        wait(lambda: held(restarted) == held(steady) == PARTITIONS / 2, 90,
             "the partitions to be shared")
        before = rebalances(steady)
        restarted.stop()
        running[-1][1].join(timeout=60)
        assert not running[-1][1].is_alive()
        again = start("a")
        wait(lambda: held(again) == held(steady) == PARTITIONS / 2, 90,
             "the restarted worker to hold its partitions again")
        if static:
            assert rebalances(steady) == before, "the group rebalanced"
            assert rebalances(again) == 1
        else:
            assert rebalances(steady) > before            # the leave and the join
    finally:
        for worker, thread in running:
            worker.stop()
        for worker, thread in running:
            thread.join(timeout=60)
