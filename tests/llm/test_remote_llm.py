"""The remote LLM tier: :class:`RemoteEngine` against facestream's own OpenAI-compatible
server (:mod:`facestream.llm.server`) on an ephemeral port, with the real
SmolLM2-135M-Instruct weights (fp32, CPU).  Greedy outputs must equal the in-process
:class:`Engine`'s and HF ``generate``'s, with and without visual splices; requests in flight
batch on the server; an unreachable server, one without prompt-embeddings support and bad
bodies give clear errors.  Wire-format details are checked against a scripted stub server
that records what the client sends."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.llm.engine import Engine
from facestream.llm.remote import RemoteEngine, RemoteEngineError, encode_embeds, \
    load_embedding_table
from facestream.llm.requests import GenerationRequest, RequestError
from facestream.llm.server import LLMServer
from facestream.retry import Backoff

NEW = 10                    # new tokens per request
IMAGE = -200                # the worker's placeholder id (out of vocabulary, as LLaVA's)
N_VISUAL = 12
QUESTIONS = ("Describe the facial expression of a smiling woman.",
             "Reply with one word: the opposite of happy.",
             "Which facial action units are active when someone is afraid? Explain briefly.")
VISUAL_QUESTIONS = ("What expression does this face show?",
                    "Describe the eyes and the mouth of this person.")
FAST = Backoff(attempts=2, base_s=0.01, maximum_s=0.01, seed=0)
WAIT_S = 60                 # bound on waits for something the test knows will happen


def splice(model, ids: tuple[int, ...], visual: torch.Tensor | None) -> torch.Tensor:
    """Reference prompt embeddings: token rows, visual rows at the placeholders.
    -> [T, hidden]"""
    idx = torch.tensor(ids)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(idx.masked_fill(idx == IMAGE, 0))
        if visual is not None:
            embeds[idx == IMAGE] = visual
    return embeds


def hf_greedy(model, embeds: torch.Tensor, new: int = NEW) -> tuple[int, ...]:
    """HF generate, greedy, one request given as inputs_embeds [T, hidden]: the new ids."""
    with torch.inference_mode():
        out = model.generate(inputs_embeds=embeds[None],
                             attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                             do_sample=False, max_new_tokens=new)
    return tuple(out[0].tolist())


@pytest.fixture(scope="module")
def cases(smol) -> list[tuple[GenerationRequest, tuple[int, ...]]]:
    """Three text prompts and two with N_VISUAL placeholders (seeded visual tokens scaled to
    the mean embedding norm), each with HF generate's greedy ids."""
    model, tokenizer = smol
    torch.manual_seed(0)
    target_norm = model.get_input_embeddings().weight.norm(dim=-1).mean()
    out = []
    for i, question in enumerate(QUESTIONS + VISUAL_QUESTIONS):
        visual = None
        content = question
        if question in VISUAL_QUESTIONS:
            content = f"@IMG@\n{question}"
            with torch.no_grad():
                visual = torch.randn(N_VISUAL, model.config.hidden_size)
                visual = visual * (target_norm / visual.norm(dim=-1, keepdim=True))
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
        pieces = [tokenizer(p, add_special_tokens=False)["input_ids"]
                  for p in text.split("@IMG@")]
        ids = tuple(pieces[0] + ([IMAGE] * N_VISUAL + pieces[1] if len(pieces) > 1 else []))
        request = GenerationRequest(f"r{i}", ids, visual=visual, max_new_tokens=NEW)
        out.append((request, hf_greedy(model, splice(model, ids, visual))))
    return out


@pytest.fixture(scope="module")
def server(smol):
    model, tokenizer = smol
    with LLMServer(model, tokenizer, max_batch=4, max_seq_len=128, port=0,
                   model_name="smol") as running:
        yield running


@pytest.fixture
def remote(smol, server):
    model, _ = smol
    client = RemoteEngine(server.url, embedding=model.get_input_embeddings().weight,
                          image_token_id=IMAGE, max_in_flight=4)
    yield client
    client.close()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---- against facestream's server with the real weights -------------------------------------

@pytest.mark.slow
def test_remote_greedy_equals_engine_and_hf(smol, cases, remote):
    model, tokenizer = smol
    requests = [request for request, _ in cases]
    expected = [tokens for _, tokens in cases]
    assert any(t[-1] == tokenizer.eos_token_id for t in expected)      # one ends early
    assert any(t[-1] != tokenizer.eos_token_id for t in expected)      # one runs to length
    got = remote.generate(requests)
    local = Engine(model, tokenizer, max_batch=4, max_seq_len=128,
                   image_token_id=IMAGE).generate(requests)
    assert [r.token_ids for r in got] == expected == [r.token_ids for r in local]
    for r, ref in zip(got, local):
        assert (r.request_id, r.text, r.finish_reason, r.prompt_tokens) == \
            (ref.request_id, ref.text, ref.finish_reason, ref.prompt_tokens)
        assert math.isnan(r.ttft_s) and r.latency_s > 0
    stats = remote.stats
    assert stats["tokens"] == sum(len(t) for t in expected) and stats["failed"] == 0
    assert stats["queued"] == stats["running"] == 0


@pytest.mark.slow
def test_stop_strings_and_seeded_sampling_match_in_process(smol, cases, remote):
    model, tokenizer = smol
    (long_request, long_ids), (short_request, _) = cases[2], cases[1]
    word = tokenizer.decode(long_ids, skip_special_tokens=True).split()[3]
    requests = [
        GenerationRequest("stop", long_request.prompt_ids, stop=("@@never@@", word),
                          max_new_tokens=NEW),
        GenerationRequest("seeded", short_request.prompt_ids, temperature=1.0, seed=7,
                          ignore_eos=True, max_new_tokens=NEW)]
    got = remote.generate(requests)
    local = Engine(model, tokenizer, max_batch=2, max_seq_len=128).generate(requests)
    assert got[0].finish_reason == "stop" and word not in got[0].text
    assert len(got[1].token_ids) == NEW
    for r, ref in zip(got, local):
        assert (r.token_ids, r.text, r.finish_reason) == (ref.token_ids, ref.text,
                                                          ref.finish_reason)


@pytest.mark.slow
def test_requests_in_flight_batch_on_the_server(cases, server, remote):
    """Four requests in flight at once (max_in_flight=4) reach the server's engine together
    and share its steps.  The engine's loop is held (its step waits) until the fourth request
    has been submitted to it, so whether they overlap does not depend on how fast the client
    threads send them; a client or server that serialises them never gets there."""
    engine = server.engine
    arrived = threading.Condition()
    submitted: list[str] = []
    gate_opened: list[bool] = []
    real_submit, real_step = engine.submit, engine.step

    def submit(request):
        future = real_submit(request)
        with arrived:
            submitted.append(request.request_id)
            arrived.notify_all()
        return future

    def step():
        if not gate_opened:
            with arrived:
                gate_opened.append(arrived.wait_for(lambda: len(submitted) >= 4,
                                                    timeout=WAIT_S))
        return real_step()

    before = server.stats
    requests = [GenerationRequest(f"b{i}", cases[i % 3][0].prompt_ids, ignore_eos=True,
                                  max_new_tokens=NEW) for i in range(4)]
    engine.submit, engine.step = submit, step
    try:
        results = remote.generate(requests)
    finally:
        del engine.submit, engine.step
    after = server.stats
    assert gate_opened == [True], f"the engine never held the 4 requests at once ({submitted})"
    tokens, steps = after["tokens"] - before["tokens"], after["steps"] - before["steps"]
    assert tokens == sum(len(r.token_ids) for r in results) == 4 * NEW
    # A request alone makes at most 2 tokens per engine step (its first token at admission
    # plus one decode); more than 2 per step means requests shared steps.  All four admitted
    # in the first step share every step: NEW - 1 steps in all (alone: 4 * (NEW - 1)).
    assert tokens / steps > 2, (tokens, steps)
    assert steps == NEW - 1, (tokens, steps)


@pytest.mark.slow
def test_server_without_embeddings_support(smol, cases):
    model, tokenizer = smol
    (visual_request, _), (text_request, text_ids) = cases[3], cases[1]
    with LLMServer(model, tokenizer, max_batch=1, max_seq_len=96, port=0,
                   accept_embeds=False) as plain:
        client = RemoteEngine(plain.url, embedding=model.get_input_embeddings().weight,
                              image_token_id=IMAGE)
        with pytest.raises(RemoteEngineError, match="--enable-prompt-embeds") as info:
            client.submit(visual_request).result()
        assert "\n" not in str(info.value)
        short = GenerationRequest("t", text_request.prompt_ids, max_new_tokens=2)
        assert client.generate([short])[0].token_ids == text_ids[:2]    # token ids still work
        client.close()


def test_a_server_with_an_api_key_serves_only_requests_that_carry_it(smol, cases):
    """``LLMServer(api_key=...)``: /v1 routes answer 401 (a JSON error, one line) without
    the key or with another, /health stays open, and a client with the key gets the same
    tokens as always."""
    model, tokenizer = smol
    request, expected = cases[0]
    with LLMServer(model, tokenizer, max_batch=1, max_seq_len=96, port=0,
                   api_key="s3cret") as guarded:
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 1}).encode()
        for headers in ({}, {"Authorization": "Bearer other"}, {"Authorization": "s3cret"}):
            for data in (None, body):
                call = urllib.request.Request(guarded.url + ("/v1/completions" if data else
                                                             "/v1/models"), data=data,
                                              headers={"Content-Type": "application/json",
                                                       **headers})
                with pytest.raises(urllib.error.HTTPError) as info:
                    urllib.request.urlopen(call, timeout=WAIT_S)
                error = json.loads(info.value.read())["error"]
                assert info.value.code == 401 and error["type"] == "AuthenticationError"
                assert "API key" in error["message"] and "s3cret" not in error["message"]
        with urllib.request.urlopen(guarded.url + "/health", timeout=WAIT_S) as answer:
            assert answer.status == 200
        client = RemoteEngine(guarded.url, embedding=model.get_input_embeddings().weight,
                              image_token_id=IMAGE, api_key="s3cret")
        short = GenerationRequest("k", request.prompt_ids, max_new_tokens=3)
        assert client.generate([short])[0].token_ids == expected[:3]
        client.close()


def test_models_and_health(server):
    with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as answer:
        listing = json.loads(answer.read())
    assert [m["id"] for m in listing["data"]] == ["smol"]
    assert listing["data"][0]["max_model_len"] == 128
    with urllib.request.urlopen(server.url + "/health", timeout=10) as answer:
        assert answer.status == 200


def test_completion_answer_has_vllm_shape(smol, server):
    model, tokenizer = smol
    ids = tokenizer("The capital of France is")["input_ids"]
    body = {"model": "smol", "prompt": "The capital of France is",
            "prompt_embeds": [encode_embeds(splice(model, tuple(ids), None))],
            "max_tokens": 3, "temperature": 0}
    status, answer = post(server.url + "/v1/completions", json.dumps(body).encode())
    assert status == 200, answer
    assert answer["object"] == "text_completion" and answer["model"] == "smol"
    first, second = answer["choices"]
    assert [first["index"], second["index"]] == [0, 1]
    assert first["text"] == second["text"]                  # same prompt, as embeds and as text
    assert first["token_ids"] is None                       # not asked for
    assert first["finish_reason"] == "length" and first["stop_reason"] is None
    assert answer["usage"] == {"prompt_tokens": 2 * len(ids), "completion_tokens": 6,
                               "total_tokens": 2 * len(ids) + 6}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _saved(tensor: torch.Tensor) -> str:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return _b64(buffer.getvalue())


@pytest.mark.parametrize("path, body, status, match", [
    ("/v1/completions", b"{not json", 400, "not JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON list; expected an object"),
    ("/v1/completions", b"{}", 400, "either prompt or prompt_embeds"),
    ("/v1/completions", {"prompt_embeds": "@@@"}, 400, "not valid base64"),
    ("/v1/completions", {"prompt_embeds": _b64(b"hello")}, 400, "torch.save'd tensor"),
    ("/v1/completions", {"prompt_embeds": _saved(torch.zeros(3, 64))}, 400,
     r"hidden size 64; expected base64 of a tensor \[seq_len, 576\]"),
    ("/v1/completions", {"prompt_embeds": _saved(torch.zeros(3, 576, dtype=torch.int64))},
     400, "dtype torch.int64"),
    ("/v1/completions", {"prompt_embeds": _saved(torch.zeros(3, 576).to_sparse())}, 400,
     "expected a dense tensor"),
    ("/v1/completions", {"prompt": [1, 49152]}, 400, "token id 49152 is outside"),
    ("/v1/completions", {"prompt": [-1, 5]}, 400, "token id -1 is outside"),
    ("/v1/completions", {"prompt": [1, 2], "n": 2}, 400, "n=2 is not supported"),
    ("/v1/completions", {"prompt": [1, 2], "stream": True}, 400, "stream=True"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens=0"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 500}, 400, "exceeds max_seq_len 128"),
    ("/v1/completions", {"prompt": [1, 2], "temperature": "hot"}, 400, "temperature='hot'"),
    ("/v1/completions", {"prompt": [1, 2], "stop": [""]}, 400, "stop="),
    ("/v1/completions", {"prompt": [1, 2], "seed": 2 ** 64}, 400, "seed=18446744073709551616"),
    ("/v1/chat/completions", {"prompt": [1, 2]}, 404, "no route POST /v1/chat/completions"),
])
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, path, body, status,
                                                              match):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = server.stats["http_errors"]
    got, answer = post(server.url + path, raw)
    assert got == status
    error = answer["error"]
    assert error["code"] == status and "\n" not in error["message"]
    assert re.search(match, error["message"]), error["message"]
    assert server.stats["http_errors"] == before + 1
    ok, answer = post(server.url + "/v1/completions",
                      json.dumps({"prompt": [1, 2, 3], "max_tokens": 1}).encode())
    assert ok == 200 and len(answer["choices"]) == 1


# ---- the client against scripted endpoints -------------------------------------------------

class Stub:
    """A scripted endpoint on an ephemeral port: POST answers come from ``script`` in order
    (the last one repeats); request bodies and the most requests held at once are recorded.
    With ``hold`` each POST is held until the test gives it a permit (:meth:`release`), so
    what the client has sent at any point depends on what the test released, not on how
    fast threads run; :meth:`wait_for` waits for a condition on the recorded state."""

    def __init__(self, script: list[tuple[int, dict]], *, hold: bool = False,
                 key: str = "") -> None:
        self.script, self.hold = list(script), hold
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []      # each request's header, in order
        self.active = self.peak = self.permits = 0
        self.opened = False
        self.lock = threading.Condition()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def refused(self) -> bool:
                """With ``key``: vLLM's --api-key answer to a request without it."""
                given = self.headers.get("Authorization")
                with stub.lock:
                    stub.authorizations.append(given)
                if key and given != f"Bearer {key}":
                    self._send(401, {"error": "Unauthorized"})
                    return True
                return False

            def do_GET(self):
                if not self.refused():
                    self._send(200, {"object": "list", "data": [{"id": "stub-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.refused():
                    return
                with stub.lock:
                    stub.bodies.append(body)
                    stub.active += 1
                    stub.peak = max(stub.peak, stub.active)
                    status, answer = stub.script.pop(0) if len(stub.script) > 1 \
                        else stub.script[0]
                    stub.lock.notify_all()
                    if stub.hold:
                        stub.lock.wait_for(lambda: stub.permits > 0 or stub.opened,
                                           timeout=WAIT_S)
                        stub.permits = max(0, stub.permits - 1)
                    stub.active -= 1
                    stub.lock.notify_all()
                self._send(status, answer)

            def _send(self, status, answer):
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def release(self, n: int = 1) -> None:
        """Let ``n`` held requests (present or future) be answered."""
        with self.lock:
            self.permits += n
            self.lock.notify_all()

    def wait_for(self, predicate) -> bool:
        """Wait (up to WAIT_S) until ``predicate()`` holds; whether it does."""
        with self.lock:
            return self.lock.wait_for(predicate, timeout=WAIT_S)

    def close(self) -> None:
        with self.lock:             # answer whatever a failed test left held
            self.opened = True
            self.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(finish: str = "length", stop_reason=None, token_ids=(5, 6)) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "stub-model",
            "choices": [{"index": 0, "text": "hi", "logprobs": None, "finish_reason": finish,
                         "stop_reason": stop_reason, "token_ids": list(token_ids)}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


@pytest.fixture
def stub_factory():
    made: list[Stub] = []

    def make(script, **kw) -> Stub:
        made.append(Stub(script, **kw))
        return made[-1]
    yield make
    for stub in made:
        stub.close()


def test_wire_format_is_vllm_completions(stub_factory):
    """What the client sends: prompt_embeds = base64 of torch.save of the spliced prompt
    [T, hidden] (compared with an independent splice) for a visual request, plain token ids
    otherwise, and the sampling fields."""
    stub = stub_factory([(200, completion())])
    torch.manual_seed(3)
    table = torch.randn(50, 16)
    visual = torch.randn(2, 16)
    ids = (4, IMAGE, IMAGE, 9)
    client = RemoteEngine(stub.url + "/v1", embedding=table, image_token_id=IMAGE)
    client.generate([
        GenerationRequest("v", ids, visual=visual, max_new_tokens=7, stop=("</s>",),
                          temperature=0.5, top_p=0.9, seed=11, ignore_eos=True),
        GenerationRequest("t", (4, 5, 6), max_new_tokens=3)])
    client.close()
    by_kind = {"prompt_embeds" in b: b for b in stub.bodies}
    sent = by_kind[True]
    raw = base64.b64decode(sent.pop("prompt_embeds"), validate=True)
    embeds = torch.load(io.BytesIO(raw), weights_only=True)
    reference = torch.stack([table[4], visual[0], visual[1], table[9]])
    assert torch.equal(embeds, reference)
    assert sent == {"model": "stub-model", "max_tokens": 7, "temperature": 0.5, "seed": 11,
                    "top_p": 0.9,
                    "stop": ["</s>"], "ignore_eos": True, "return_token_ids": True}
    assert by_kind[False] == {"model": "stub-model", "prompt": [4, 5, 6], "max_tokens": 3,
                              "temperature": 0.0, "ignore_eos": False,
                              "return_token_ids": True}


@pytest.mark.parametrize("finish, stop_reason, expected", [
    ("stop", None, "eos"),              # vLLM: end of sequence
    ("stop", 2, "eos"),                 # vLLM: a stop token id (extra EOS ids)
    ("stop", "</s>", "stop"),
    ("length", None, "length"),
    ("shed", None, "shed"),             # facestream's server: dropped from a full queue
    ("abort", None, RemoteEngineError),
])
def test_finish_reasons_map_back(stub_factory, finish, stop_reason, expected):
    stub = stub_factory([(200, completion(finish, stop_reason))])
    client = RemoteEngine(stub.url)
    future = client.submit(GenerationRequest("x", (1, 2, 3), max_new_tokens=2))
    if isinstance(expected, str):
        result = future.result()
        assert (result.finish_reason, result.text, result.token_ids,
                result.prompt_tokens) == (expected, "hi", (5, 6), 3)
    else:
        with pytest.raises(expected, match=f"finish_reason='{finish}'"):
            future.result()
    client.close()


@pytest.mark.parametrize("script, ok, retries", [
    ([(503, {"error": {"message": "busy"}})] * 2 + [(200, completion())], True, 2),
    ([(502, {"message": "bad gateway"})], False, 2),
])
def test_server_errors_are_retried_a_bounded_number_of_times(stub_factory, script, ok,
                                                              retries):
    stub = stub_factory(script)
    client = RemoteEngine(stub.url, model="m", backoff=FAST)
    future = client.submit(GenerationRequest("x", (1, 2), max_new_tokens=2))
    if ok:
        assert future.result().text == "hi"
    else:
        with pytest.raises(RemoteEngineError, match="failed 3 attempts .*HTTP 502: bad gateway"):
            future.result()
    assert len(stub.bodies) == retries + 1
    assert client.stats["retries"] == retries
    client.close()


def test_the_api_key_goes_as_a_bearer_token_and_a_refusal_names_the_setting(stub_factory):
    """Against an endpoint that wants a key (vLLM's --api-key answers 401 "Unauthorized"):
    with the key every call carries ``Authorization: Bearer <key>``; without it, or with
    another, the first call fails at once (no retry) with one line naming llm_api_key and
    not the key that was sent; with no key set no Authorization header is sent."""
    stub = stub_factory([(200, completion())], key="k-123")
    request = GenerationRequest("x", (1, 2), max_new_tokens=2)
    client = RemoteEngine(stub.url, backoff=FAST, api_key="k-123")
    assert client.generate([request])[0].text == "hi"
    client.close()
    assert stub.authorizations == ["Bearer k-123"] * 2          # /v1/models, the completion
    for key in ("", "wrong-key-456"):
        del stub.authorizations[:]
        client = RemoteEngine(stub.url, backoff=FAST, api_key=key)
        with pytest.raises(RemoteEngineError, match=r"refused the API key \(HTTP 401: "
                           r"Unauthorized\); set llm_api_key") as info:
            client.submit(request).result()
        client.close()
        assert "\n" not in str(info.value) and (not key or key not in str(info.value))
        assert stub.authorizations == [f"Bearer {key}" if key else None]   # not retried
        assert client.stats["retries"] == 0 and len(stub.bodies) == 1


def test_a_400_refuses_the_request_without_retrying(stub_factory):
    stub = stub_factory([(400, {"object": "error", "message": "This model's maximum context "
                                "length is 64 tokens.", "type": "BadRequestError",
                                "code": 400})])
    client = RemoteEngine(stub.url, model="m", backoff=FAST)
    with pytest.raises(RequestError, match="request x: .* refused it .*maximum context length"):
        client.submit(GenerationRequest("x", (1, 2), max_new_tokens=2)).result()
    assert len(stub.bodies) == 1 and client.stats["failed"] == 1
    client.close()


def test_unreachable_server_is_one_line_after_bounded_retries():
    """A refused endpoint fails after the backoff's retries, having waited exactly the
    backoff's delays between attempts (``sleep`` injected and recorded: nothing is timed);
    the failure comes from the refusals, not from a timeout."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert len(slept) <= 10, "retrying without bound"

    with socket.socket() as probe:          # bound, not listening: connecting is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        client = RemoteEngine(f"http://127.0.0.1:{port}", backoff=FAST, sleep=sleep)
        refused = (rf"127\.0\.0\.1:{port}/v1/models failed 3 attempts "
                   r"\(last: ConnectionRefusedError")
        with pytest.raises(RemoteEngineError, match=refused):
            client.start()
        assert slept == list(FAST.delays())
        with pytest.raises(RemoteEngineError, match=refused) as info:
            client.submit(GenerationRequest("x", (1, 2), max_new_tokens=2)).result(WAIT_S)
        assert "\n" not in str(info.value) and "llm_endpoint" in str(info.value)
        assert slept == list(FAST.delays()) * 2
        assert client.stats["retries"] == 4 and client.stats["failed"] == 1
        client.close()


def test_in_flight_requests_are_bounded(stub_factory):
    """At most max_in_flight requests are at the server at once; the others wait, in
    submission order, and each answer lets exactly the next one through.  The stub holds
    every request until the test releases one, so the state checked at each point is fixed
    by what was released, whatever the speed of the machine."""
    stub = stub_factory([(200, completion())], hold=True)
    client = RemoteEngine(stub.url, model="m", max_in_flight=2)
    futures = [client.submit(GenerationRequest(f"x{i}", (1, 2, 100 + i), max_new_tokens=2))
               for i in range(5)]

    def sent() -> list[int]:                # which requests reached the server, in order
        return [body["prompt"][-1] - 100 for body in stub.bodies]

    assert stub.wait_for(lambda: stub.active >= 2), f"sent {sent()}"
    assert stub.active == 2 and sorted(sent()) == [0, 1]
    stats = client.stats
    assert (stats["running"], stats["queued"]) == (2, 3), stats
    for k in range(3):
        stub.release()                      # one answer: the next waiting request goes out
        assert stub.wait_for(lambda: len(stub.bodies) >= 3 + k), f"sent {sent()}"
        assert stub.active == 2 and sent()[2:] == list(range(2, 3 + k)), sent()
        stats = client.stats
        assert (stats["running"], stats["queued"]) == (2, 2 - k), stats
    stub.release(2)
    assert [f.result(WAIT_S).request_id for f in futures] == [f"x{i}" for i in range(5)]
    assert stub.peak == 2 and sorted(sent()) == list(range(5))
    stats = client.stats
    assert (stats["running"], stats["queued"], stats["failed"]) == (0, 0, 0), stats
    client.close()


@pytest.mark.parametrize("table, visual_shape, match", [
    ((50, 16), (2, 16), "prompt has 1 image placeholders but 2 visual tokens"),
    ((50, 16), (1, 8), "hidden size 8 but the embedding table's is 16"),
    ((50, 16), None, "prompt has 1 image placeholders but 0 visual tokens"),
    (None, (1, 16), "has visual tokens but this remote engine has no embedding table"),
])
def test_bad_splices_are_refused_at_submit(table, visual_shape, match):
    client = RemoteEngine("http://127.0.0.1:9", image_token_id=IMAGE,
                          embedding=None if table is None else torch.zeros(table))
    visual = None if visual_shape is None else torch.zeros(visual_shape)
    with pytest.raises(RequestError, match=match):
        client.submit(GenerationRequest("x", (1, IMAGE, 2), visual=visual))
    assert client.stats["queued"] == 0
    client.close()
    with pytest.raises(RequestError, match="remote engine is closed"):
        client.submit(GenerationRequest("y", (1, 2)))


@pytest.mark.parametrize("endpoint, expected", [
    ("http://llm-host:8000", "http://llm-host:8000"),
    ("https://llm-host/v1/", "https://llm-host"),
    ("llm-host:8000", ConfigError),
    ("", ConfigError),
])
def test_endpoint_setting(endpoint, expected):
    settings = Settings.load({"llm_endpoint": endpoint, "llm_timeout_s": 5,
                              "llm_max_in_flight": 3}, environ={})
    if isinstance(expected, str):
        client = RemoteEngine.from_settings(settings)
        assert client.endpoint == expected
        client.close()
    else:
        with pytest.raises(expected, match="llm_endpoint"):
            RemoteEngine.from_settings(settings)


def test_embedding_table_loads_alone(smol, settings):
    model, _ = smol
    table = load_embedding_table(settings.cache_dir / "models" / "smollm2-135m-instruct")
    assert torch.equal(table, model.get_input_embeddings().weight)


@pytest.mark.slow
def test_cli_llm_serve(smol, cases, settings, tmp_path):
    """`facestream llm serve --model DIR` as a user runs it: serves DIR (named after it),
    prints its URL, answers only callers with its API key, stops on SIGTERM."""
    model, _ = smol
    request, expected = cases[0]
    model_dir = tmp_path / "my-llm"
    model_dir.symlink_to(settings.cache_dir / "models" / "smollm2-135m-instruct",
                         target_is_directory=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "facestream", "llm", "serve", "--model", str(model_dir),
         "--port", "0", "--max-batch", "2", "--max-seq-len", "96", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FACESTREAM_LLM_API_KEY": "cli-key"})
    try:
        line = process.stdout.readline()
        assert line.startswith("llm: serving my-llm at http://127.0.0.1:"), \
            line + process.stderr.read()
        assert line.rstrip().endswith("; API key required"), line
        url = line.split(" at ")[1].split()[0]
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url + "/v1/models", timeout=WAIT_S)
        client = RemoteEngine.from_settings(
            Settings.load({"llm_endpoint": url, "llm_api_key": "cli-key"}),
            embedding=model.get_input_embeddings().weight, image_token_id=IMAGE)
        short = GenerationRequest("cli", request.prompt_ids, max_new_tokens=3)
        assert client.generate([short])[0].token_ids == expected[:3]
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "warning" not in process.stderr.read()   # a key, and loopback besides
    finally:
        process.kill()
        process.wait()
