"""facestream.client's EventSubscriber and the sink's retention against the real Redis that the
test command starts: events a killed subscriber held are claimed by the survivor, a poison
event is dead-lettered, a replayed event is dropped, old entries are trimmed by age, and
`events tail --consumer` takes back what its name held.  Events are a real `analyze` run's,
written with the real RedisSink; each test has its own Redis keys (the ``isolated`` fixture)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from facestream import events
from facestream.client import Deduplicator, EventSubscriber
from facestream.sinks.redis_stream import RedisSink
from tests.helpers import REPO, read_events, run_cli
from tests.integration.helpers import wait

pytestmark = pytest.mark.integration

# A subscriber process: appends each handled event id to OUT; its HANG-th event (0: none)
# is never handled: it writes the id to OUT.hanging and blocks, holding what it has read.
SUBSCRIBER = """
import sys, threading
from facestream.client import EventSubscriber
from facestream.config import Settings
out, hang, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = 0
def handle(event):
    global seen
    seen += 1
    if seen == hang:
        with open(out + ".hanging", "w") as f:
            f.write(event.id)
        threading.Event().wait()
    with open(out, "a") as f:
        f.write(event.id + "\\n")
EventSubscriber(Settings.load(), group=group, handler=handle, batch=5).run()
"""


@pytest.fixture(scope="module")
def real_events(sample, tmp_path_factory) -> list[dict]:
    """The 20-odd events of a real `analyze` run (analysis and track events)."""
    out = tmp_path_factory.mktemp("events")
    proc = run_cli("analyze", str(sample("WolfgangLanger_Pexels.mp4")), "--no-describe",
                   "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    evs = read_events(out / "events.jsonl")
    assert len(evs) >= 12 and len({e["id"] for e in evs}) == len(evs)
    return evs


def _redis(settings):
    import redis

    return redis.Redis.from_url(settings.redis_url)


def _ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _in_thread(subscriber: EventSubscriber) -> threading.Thread:
    thread = threading.Thread(target=subscriber.run, daemon=True)
    thread.start()
    return thread


def test_a_killed_subscribers_pending_events_are_claimed_by_the_survivor(isolated, real_events,
                                                                         tmp_path):
    settings, env = isolated
    env = {**os.environ, **env, "FACESTREAM_SUBSCRIBER_CLAIM_IDLE_S": "1"}
    sink, client, group = RedisSink(settings), _redis(settings), "svc"
    half = len(real_events) // 2
    victim_out, survivor_out = tmp_path / "victim", tmp_path / "survivor"

    def start(out: Path, hang: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(out), str(hang), group],
                                env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    victim = start(victim_out, hang=2)
    survivor = None
    try:
        sink.write(real_events[:half])
        wait(lambda: Path(f"{victim_out}.hanging").exists() or victim.poll() is not None, 120,
             "the victim to hang in its handler")
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        # It holds what it read and did not acknowledge: at least the event it hangs on.
        (consumer,) = client.xinfo_consumers(settings.events_stream, group)
        held = client.xpending_range(settings.events_stream, group, "-", "+", 100,
                                     consumername=consumer["name"])
        by_entry = {entry_id: json.loads(fields[b"event"])["id"]
                    for entry_id, fields in client.xrange(settings.events_stream)}
        held_ids = {by_entry[row["message_id"]] for row in held}
        assert Path(f"{victim_out}.hanging").read_text() in held_ids

        survivor = start(survivor_out, hang=0)
        sink.write(real_events[half:])
        victim.kill()
        victim.wait(timeout=60)

        written = {e["id"] for e in real_events}
        wait(lambda: written <= set(_ids(victim_out)) | set(_ids(survivor_out))
             and client.xpending(settings.events_stream, group)["pending"] == 0, 120,
             "every event handled and acknowledged")
        assert held_ids <= set(_ids(survivor_out)), "the survivor claimed what the victim held"
        assert not set(_ids(victim_out)) & held_ids

        survivor.send_signal(signal.SIGTERM)            # a clean stop
        _, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_an_event_whose_handler_keeps_failing_is_dead_lettered(isolated, real_events):
    settings, _ = isolated
    settings = dataclasses.replace(settings, subscriber_claim_idle_s=0.2,
                                   subscriber_max_deliveries=3)
    client = _redis(settings)
    RedisSink(settings).write(real_events)
    poison = next(e for e in real_events if e["type"] == events.FACE_ANALYSIS)["id"]
    calls: list[str] = []

    def handle(event):
        calls.append(event.id)
        if event.id == poison:
            raise ValueError(f"cannot store {event.id}\nsecond line of the error")

    subscriber = EventSubscriber(settings, group="svc", handler=handle)
    thread = _in_thread(subscriber)
    try:
        wait(lambda: subscriber.stats.dead_letters == 1
             and subscriber.stats.handled == len(real_events) - 1, 120,
             "the poison event dead-lettered and the others handled")
    finally:
        subscriber.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert calls.count(poison) == 3 and subscriber.stats.failures == 3
    assert sorted(set(calls)) == sorted(e["id"] for e in real_events)
    assert client.xpending(settings.events_stream, "svc")["pending"] == 0

    ((_, dead),) = client.xrange(subscriber.dead_letters)
    original = next(e for e in real_events if e["id"] == poison)
    assert json.loads(dead[b"event"]) == original and dead[b"id"].decode() == poison
    assert dead[b"error"].decode() == f"ValueError: cannot store {poison}"
    assert dead[b"deliveries"] == b"3" and dead[b"group"] == b"svc"
    assert dead[b"stream"].decode() == settings.events_stream
    assert client.xrange(settings.events_stream, dead[b"entry"], dead[b"entry"])


def test_an_event_whose_consumers_keep_dying_is_dead_lettered(isolated, real_events):
    """An entry already delivered the most times allowed (its handler killed one process
    after another) is dead-lettered when claimed, without calling the handler again."""
    settings, _ = isolated
    settings = dataclasses.replace(settings, subscriber_claim_idle_s=0.2,
                                   subscriber_max_deliveries=3)
    client = _redis(settings)
    RedisSink(settings).write(real_events)
    client.xgroup_create(settings.events_stream, "svc", id="0")
    ((_, ((entry_id, fields),)),) = client.xreadgroup("svc", "gone", {settings.events_stream: ">"},
                                                      count=1)
    client.xclaim(settings.events_stream, "svc", "gone", 0, [entry_id], retrycount=3)
    handled: list[str] = []
    subscriber = EventSubscriber(settings, group="svc", handler=lambda e: handled.append(e.id))
    thread = _in_thread(subscriber)
    try:
        wait(lambda: subscriber.stats.dead_letters == 1
             and subscriber.stats.handled == len(real_events) - 1, 120,
             "the entry dead-lettered and the others handled")
    finally:
        subscriber.stop()
        thread.join(timeout=60)
    assert fields[b"id"].decode() not in handled
    ((_, dead),) = client.xrange(subscriber.dead_letters)
    assert dead[b"entry"] == entry_id and dead[b"deliveries"] == b"4"
    assert dead[b"error"].startswith(b"delivered 4 times and never acknowledged")
    assert client.xpending(settings.events_stream, "svc")["pending"] == 0


def test_dedupe_drops_a_replayed_event(isolated, real_events):
    """A worker that replays a Kafka message writes its events again, with the same ids:
    each is handled once, and every entry is acknowledged."""
    settings, _ = isolated
    client, sink = _redis(settings), RedisSink(settings)
    sink.write(real_events)
    sink.write(real_events[:5])                      # the replay
    handled: list[str] = []
    subscriber = EventSubscriber(settings, group="svc", handler=lambda e: handled.append(e.id),
                                 dedupe=Deduplicator(1000))
    thread = _in_thread(subscriber)
    try:
        wait(lambda: subscriber.stats.handled + subscriber.stats.duplicates
             == len(real_events) + 5, 120, "every entry handled or dropped")
    finally:
        subscriber.stop()
        thread.join(timeout=60)
    assert handled == [e["id"] for e in real_events]
    assert subscriber.stats.duplicates == 5
    assert client.xpending(settings.events_stream, "svc")["pending"] == 0


def test_retention_by_time_trims_old_entries(isolated, real_events):
    """Entries older than events_retention_s go when the sink next writes (whole stream
    nodes: at most one node's worth of old entries can stay); new ones all stay."""
    settings, _ = isolated
    client = _redis(settings)
    per_stream = f"{settings.events_stream}:{real_events[0]['data']['stream_id']}"
    node_entries = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    hour_ms, now_ms = 3_600_000, int(time.time() * 1000)
    fields = {"id": real_events[0]["id"], "type": real_events[0]["type"],
              "event": json.dumps(real_events[0], separators=(",", ":"))}
    old = 2 * node_entries + 5
    for key in (settings.events_stream, per_stream):
        for i in range(old):                           # two hours ago, explicit ids
            client.xadd(key, fields, id=f"{now_ms - 2 * hour_ms + i}-0")

    def old_left(key):
        return len(client.xrange(key, "-", f"{now_ms - hour_ms}-0"))

    RedisSink(settings).write(real_events[:3])         # retention off (the default)
    assert old_left(settings.events_stream) == old_left(per_stream) == old

    RedisSink(dataclasses.replace(settings, events_retention_s=3600)).write(real_events[3:6])
    for key in (settings.events_stream, per_stream):
        assert old_left(key) <= min(node_entries, old - 1), key
        assert [json.loads(f[b"event"])["id"] for _, f in
                client.xrange(key, f"{now_ms - hour_ms}-0", "+")] == [
            e["id"] for e in real_events[:6]], key


def test_events_tail_consumer_name(isolated, real_events):
    """`events tail` reads as a consumer unique to the process, so it leaves alone what
    another consumer holds; `--consumer NAME` first prints what NAME held (a restarted
    tail under a fixed name); SIGTERM stops it cleanly."""
    settings, env = isolated
    client = _redis(settings)
    stream_id = real_events[0]["data"]["stream_id"]
    key = f"{settings.events_stream}:{stream_id}"
    RedisSink(settings).write(real_events[:3])
    client.xgroup_create(key, "tails", id="0")
    client.xreadgroup("tails", "keeper", {key: ">"}, count=2)    # read, never acknowledged

    proc = run_cli("events", "tail", "--stream", stream_id, "--group", "tails", "--json",
                   "--count", "1", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == [
        real_events[2]["id"]]
    consumers = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(key, "tails")}
    assert consumers == {"keeper": 2}, "the unique tail left, holding nothing; keeper holds 2"

    proc = run_cli("events", "tail", "--stream", stream_id, "--group", "tails", "--consumer",
                   "keeper", "--count", "2", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(f" {stream_id} " in line for line in lines), lines
    assert client.xpending(key, "tails")["pending"] == 0

    follower = subprocess.Popen([sys.executable, "-m", "facestream", "events", "tail",
                                 "--stream", stream_id, "--group", "tails", "--json"],
                                env={**os.environ, **env}, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        RedisSink(settings).write(real_events[3:4])
        lines = []
        reader = threading.Thread(target=lambda: lines.append(follower.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert lines and json.loads(lines[0])["id"] == real_events[3]["id"], lines
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert client.xpending(key, "tails")["pending"] == 0
