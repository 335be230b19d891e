"""The optional sinks beside Redis: the events topic's records (CloudEvents Kafka binding,
binary mode), webhooks (batched HTTP binding, HMAC signature, retries, dead letters) against
a loopback HTTP receiver, and the fan-out the worker writes through.  No broker or Redis
here: tests/integration/test_event_sinks.py runs them against the real ones."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from facestream import events
from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.sinks.fanout import FanoutSink, build_sink
from facestream.sinks.kafka_topic import (EventsTopicUnavailable, KafkaEventSink, kafka_headers,
                                          kafka_record)
from facestream.sinks.redis_stream import RedisSink, SinkUnavailable
from facestream.sinks.webhook import (CONTENT_TYPE, SIGNATURE_HEADER, TIMESTAMP_HEADER,
                                      WebhookSink, request_body, signature, verify)


def _event(stream_id="camA", track_id="t1", kind=events.TRACK_STARTED, time_s=1.0):
    return events.track_event(kind, stream_id=stream_id, track_id=track_id, time_s=time_s,
                              pts=int(time_s * 1000), profile="compact",
                              time_epoch=1_767_225_600.0)


def _error_event():
    return events.stream_error(stream_id="camA", message="gone", time_s=2.0, seq=3,
                               profile="compact", time_epoch=1_767_225_600.0, fatal=False)


# -- the events topic -----------------------------------------------------------------------

def test_kafka_headers_follow_the_cloudevents_kafka_binary_binding():
    event = _event()
    headers = dict(kafka_headers(event))
    assert headers == {
        "ce_specversion": b"1.0", "ce_id": event["id"].encode(),
        "ce_source": b"facestream://camA", "ce_type": event["type"].encode(),
        "ce_time": event["time"].encode(), "ce_subject": b"t1",
        "ce_dataschema": event["dataschema"].encode(), "content-type": b"application/json"}
    assert all(isinstance(v, bytes) for v in headers.values())


def test_an_event_without_subject_has_no_ce_subject_header():
    event = _error_event()
    assert "subject" not in event
    names = [name for name, _ in kafka_headers(event)]
    assert "ce_subject" not in names and len(names) == len(set(names)) == 7


def test_kafka_record_is_keyed_by_stream_id_and_holds_the_data_alone():
    event = _event(stream_id="lobby")
    key, value, _ = kafka_record(event)
    assert key == b"lobby"
    assert json.loads(value) == event["data"]


class _FailingProducer:
    def __init__(self):
        self.sent = 0

    def send(self, topic, *, key, value, headers):
        from kafka.errors import KafkaTimeoutError

        self.sent += 1
        raise KafkaTimeoutError("no broker")

    def close(self, timeout=None):
        pass


def test_a_broker_that_does_not_ack_is_the_retryable_sink_error():
    settings = Settings.load({"events_topic": "fs.events", "kafka_bootstrap": "127.0.0.1:1"})
    sink = KafkaEventSink(settings, producer=_FailingProducer())
    with pytest.raises(EventsTopicUnavailable) as caught:
        sink.write([_event()])
    assert isinstance(caught.value, SinkUnavailable)       # the worker's retry loop takes it
    assert "fs.events" in str(caught.value)


# -- the fan-out ----------------------------------------------------------------------------

class _Recorder:
    def __init__(self, name, log, failures=0):
        self.name, self.log, self.failures = name, log, failures

    def write(self, batch, status=None):
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable(f"{self.name} away")
        self.log.append((self.name, [e["id"] for e in batch], status))
        return len(batch)


def test_fanout_writes_redis_first_and_a_retry_skips_the_sinks_that_acknowledged():
    log: list = []
    sink = FanoutSink(_Recorder("redis", log), [_Recorder("kafka", log, failures=2),
                                                _Recorder("hooks", log)])
    batch, status = [_event(), _event(track_id="t2")], {"camA": {"state": "running"}}
    for _ in range(2):                       # the worker's _until_available retrying the call
        with pytest.raises(SinkUnavailable):
            sink.write(batch, status)
    assert sink.write(batch, status) == 2
    ids = [e["id"] for e in batch]
    # Redis once (with the status), then each optional sink once (without it).
    assert log == [("redis", ids, status), ("kafka", ids, None), ("hooks", ids, None)]
    sink.write(batch, status)                # a new round with the same events goes everywhere
    assert [name for name, *_ in log[3:]] == ["redis", "kafka", "hooks"]


def test_with_no_optional_sink_set_the_worker_writes_to_redis_alone():
    settings = Settings.load({})
    assert settings.events_topic == "" and settings.webhook_urls == ""
    assert isinstance(build_sink(settings), RedisSink)
    both = build_sink(Settings.load({"events_topic": "fs.events",
                                     "webhook_urls": "http://127.0.0.1:1/hook"}))
    assert isinstance(both, FanoutSink)
    assert [type(s) for s in both.others] == [KafkaEventSink, WebhookSink]


def test_a_webhook_url_must_be_http():
    with pytest.raises(ConfigError, match="webhook_urls"):
        Settings.load({"webhook_urls": "ftp://example.com/x"})


# -- webhooks ---------------------------------------------------------------------------------

def test_signature_is_the_hmac_sha256_of_the_timestamp_and_the_body():
    import hashlib
    import hmac

    body, sent = b'[{"id":"x"}]', 1_700_000_000
    expected = "sha256=" + hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret", body, sent) == expected
    assert verify("s3cret", body, expected, str(sent), now=sent + 10)
    assert not verify("s3cret", body + b" ", expected, str(sent), now=sent)
    assert not verify("other", body, expected, str(sent), now=sent)
    assert not verify("s3cret", body, None, str(sent), now=sent)
    assert not verify("s3cret", body, expected, None, now=sent)
    # The timestamp is signed: moving it to make an old request look fresh breaks it.
    assert not verify("s3cret", body, expected, str(sent + 400), now=sent + 400)


@pytest.mark.parametrize("age_s, accepted", [(-299, True), (0, True), (299, True),
                                             (301, False), (-301, False), (86_400, False)])
def test_a_signed_request_is_refused_outside_the_replay_window(age_s, accepted):
    body, sent = b"[]", 1_700_000_000
    header = signature("s3cret", body, sent)
    assert verify("s3cret", body, header, str(sent), now=sent + age_s) is accepted


def test_each_try_is_signed_with_its_own_timestamp():
    clock = iter([1000.0, 1007.5, 1030.0])
    seen: list[dict] = []

    def post(url, body, headers, timeout_s):
        seen.append(dict(headers))
        return 503 if len(seen) < 3 else 204

    settings = Settings.load({"webhook_urls": "http://127.0.0.1:9/hook",
                              "webhook_secret": "s3cret", "webhook_max_attempts": 3})
    sink = WebhookSink(settings, redis=_FakeRedis(), post=post, sleep=lambda s: None,
                       clock=lambda: next(clock))
    sink.write([_event()])
    assert [h[TIMESTAMP_HEADER] for h in seen] == ["1000", "1007", "1030"]
    body = request_body([_event()])
    for headers in seen:
        sent = int(headers[TIMESTAMP_HEADER])
        assert verify("s3cret", body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER],
                      now=sent)


def test_without_a_secret_requests_carry_neither_signature_nor_timestamp():
    seen: list[dict] = []
    settings = Settings.load({"webhook_urls": "http://127.0.0.1:9/hook"})
    sink = WebhookSink(settings, redis=_FakeRedis(),
                       post=lambda url, body, headers, timeout_s: seen.append(headers) or 204)
    sink.write([_event()])
    assert SIGNATURE_HEADER not in seen[0] and TIMESTAMP_HEADER not in seen[0]


def test_the_urls_are_served_in_parallel():
    """Each receiver answers only once the other has been asked: one after the other, the
    first would wait for ever (here: the barrier's timeout, then a dead letter)."""
    both_asked = threading.Barrier(2, timeout=30)

    def post(url, body, headers, timeout_s):
        both_asked.wait()
        return 204

    settings = Settings.load({"webhook_urls": "http://127.0.0.1:9/a,http://127.0.0.1:9/b",
                              "webhook_max_attempts": 1})
    redis = _FakeRedis()
    sink = WebhookSink(settings, redis=redis, post=post)
    try:
        assert sink.write([_event()]) == 1
    finally:
        sink.close()
    assert redis.streams == {}


class _Receiver:
    """A loopback HTTP receiver that answers ``fail`` with 500 ``failures`` times (forever
    with None), then 204; it keeps every request it accepted."""

    def __init__(self, failures: int | None = 0, fail: int = 500):
        self.failures, self.fail = failures, fail
        self.accepted: list[tuple[dict, bytes]] = []
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                if receiver.failures is None or receiver.failures > 0:
                    if receiver.failures:
                        receiver.failures -= 1
                    self.send_response(receiver.fail)
                else:
                    receiver.accepted.append((dict(self.headers), body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[_Receiver] = []

    def make(*args, **kwargs):
        made.append(_Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


class _FakeRedis:
    """Enough of redis-py for dead letters: a pipeline of XADDs."""

    def __init__(self):
        self.streams: dict[str, list[dict]] = {}

    def pipeline(self, transaction=False):
        return self

    def xadd(self, key, fields, maxlen=None, approximate=True):
        self.streams.setdefault(key, []).append(dict(fields))

    def execute(self):
        pass

    def close(self):
        pass


def _webhooks(urls, sleeps, **overrides):
    settings = Settings.load({"webhook_urls": ",".join(urls), "webhook_secret": "s3cret",
                              "webhook_max_attempts": 4, "webhook_backoff_s": 0.5,
                              "webhook_backoff_max_s": 1.5, "webhook_timeout_s": 10,
                              **overrides})
    redis = _FakeRedis()
    return WebhookSink(settings, redis=redis, sleep=sleeps.append), redis


def test_a_receiver_that_fails_then_recovers_gets_every_event_signed(receivers):
    flaky, steady = receivers(failures=2), receivers()
    sleeps: list[float] = []
    sink, redis = _webhooks([flaky.url, steady.url], sleeps)
    rounds = [[_event(), _event(track_id="t2")], [_event(kind=events.TRACK_ENDED, time_s=3.0)]]
    for batch in rounds:
        assert sink.write(batch, {"camA": {"state": "running"}}) == len(batch)
    assert sleeps == [0.5, 1.0]              # two failures: capped exponential backoff
    assert flaky.requests == 4 and redis.streams == {}
    for receiver in (flaky, steady):
        got = []
        for headers, body in receiver.accepted:
            assert headers["Content-Type"] == CONTENT_TYPE
            assert verify("s3cret", body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])
            got.append(json.loads(body))
        assert got == rounds                 # every event, whole, in order


def test_a_receiver_that_never_accepts_is_dead_lettered_and_the_write_returns(receivers):
    dead, alive = receivers(failures=None), receivers()
    sleeps: list[float] = []
    sink, redis = _webhooks([dead.url, alive.url], sleeps)
    batch = [_event(), _error_event()]
    assert sink.write(batch) == 2
    assert dead.requests == 4 and sleeps == [0.5, 1.0, 1.5]          # capped at 1.5 s
    letters = redis.streams["facestream:webhooks:dead"]
    assert [(l["url"], l["id"], l["reason"], l["attempts"]) for l in letters] == [
        (dead.url, e["id"], "HTTP 500", "4") for e in batch]
    assert json.loads(letters[0]["event"]) == batch[0]
    assert [json.loads(body) for _, body in alive.accepted] == [batch]

    # While it is down, a round costs it one try, not the whole backoff; once it accepts
    # again it is back to full retries.
    sleeps.clear()
    sink.write([_event(track_id="t3")])
    assert dead.requests == 5 and sleeps == [] and len(letters) == 3
    dead.failures = 0
    sink.write([_event(track_id="t4")])
    assert len(dead.accepted) == 1 and len(letters) == 3


def test_a_client_error_is_not_retried_and_a_refused_connection_is(receivers):
    gone = receivers(failures=None, fail=404)
    sleeps: list[float] = []
    refused_url = "http://127.0.0.1:1/hook"        # nothing listens on port 1
    sink, redis = _webhooks([gone.url, refused_url], sleeps)
    sink.write([_event()])
    letters = redis.streams["facestream:webhooks:dead"]
    assert (letters[0]["url"], letters[0]["reason"], letters[0]["attempts"]) == (
        gone.url, "HTTP 404", "1")
    assert letters[1]["url"] == refused_url and letters[1]["attempts"] == "4"
    assert "Error" in letters[1]["reason"] and len(sleeps) == 3


def test_the_receiver_check_in_the_docs_accepts_what_the_sink_sends(receivers):
    """docs/EVENTS.md shows receivers how to verify a request: run that very code on a real
    request, and on the same request replayed with a moved timestamp."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "EVENTS.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S)
                if "def events_from" in block)
    namespace: dict = {}
    exec(code, namespace)
    receiver = receivers()
    sink, _ = _webhooks([receiver.url], [])
    batch = [_event(), _error_event()]
    sink.write(batch)
    headers, body = receiver.accepted[0]
    assert namespace["events_from"](body, headers, b"s3cret") == batch
    replayed = dict(headers, **{TIMESTAMP_HEADER: str(int(headers[TIMESTAMP_HEADER]) - 600)})
    with pytest.raises(PermissionError):
        namespace["events_from"](body, replayed, b"s3cret")
