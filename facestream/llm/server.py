"""``facestream llm serve``: the engine behind a small OpenAI-compatible HTTP endpoint.

It speaks the subset of vLLM's OpenAI-compatible server that
:class:`~facestream.llm.remote.RemoteEngine` uses, so the same client works against either:

* ``POST /v1/completions`` — ``prompt`` (text, token ids, or a list of either) and/or
  ``prompt_embeds`` (base64 of a ``torch.save``'d tensor ``[seq_len, hidden]``, or a list);
  prompts given as embeddings come first in ``choices``, as in vLLM.  ``max_tokens``
  (default 16), ``temperature`` (default 1.0), ``top_p`` (default 1.0, nucleus sampling),
  ``seed``, ``stop``, ``ignore_eos``,
  ``return_token_ids``.  Answers ``choices[i]`` with ``text``, ``finish_reason``
  (``"stop"`` | ``"length"``; ``"shed"`` when the engine's queue overflowed and dropped the
  request, facestream's own value), ``stop_reason`` and ``usage``.  Options that would change
  the output and are not implemented (``n > 1``, ``stream``, ``top_k`` ...) are refused with
  400; other unknown fields are ignored, as vLLM does.
* ``GET /v1/models`` (the one served model) and ``GET /health``.

With an API key (``llm_api_key``), every ``/v1`` route requires ``Authorization: Bearer
<key>``, as vLLM's ``--api-key`` does; ``/health`` stays open for probes.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with status 400 (bad request),
401 (missing or wrong API key), 404, 413 (body too large), 503 (queue full or shutting down)
or 500 (the engine failed).

Prompt embeddings reach the engine with no new engine API: a prompt of ``seq_len`` image
placeholders whose "visual tokens" are the whole embedding matrix (the engine splices them
in unchanged, cast to the model dtype).  Token ids from clients are checked to lie in the
vocabulary first, so the placeholder id (negative) can never come from a client.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from facestream.errors import AssetError
from facestream.llm.engine import Engine
from facestream.llm.remote import decode_embeds
from facestream.llm.requests import GenerationRequest, GenerationResult, QueueFull, RequestError

log = logging.getLogger(__name__)

EMBEDS_DISABLED = "You must set `--enable-prompt-embeds` to input `prompt_embeds`."  # vLLM's
MAX_BODY_BYTES = 512 * 2 ** 20       # a Face-LLaVA video prompt in fp32 is ~47 MB of base64
_PLACEHOLDER = -1                    # the engine's image id; never a valid client token id
# Options that change the output, with the values this server implements.
_ONLY = {"n": (1,), "best_of": (None, 1), "stream": (False,), "echo": (False,),
         "logprobs": (None,), "suffix": (None, ""),
         "top_k": (None, -1, 0), "min_p": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
         "frequency_penalty": (None, 0, 0.0), "repetition_penalty": (None, 1, 1.0),
         "logit_bias": (None, {}), "stop_token_ids": (None, [])}


class _BadRequest(Exception):
    """A request this server answers with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, eq=False)
class CompletionCall:
    """One ``/v1/completions`` body, validated.  ``prompts`` are in answer order: embedding
    prompts ``[seq_len, hidden]`` first, then token-id prompts."""

    prompts: tuple[torch.Tensor | tuple[int, ...], ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    include_stop: bool
    return_token_ids: bool

    @classmethod
    def parse(cls, raw: bytes, *, tokenizer, hidden: int, vocab: int,
              accept_embeds: bool) -> CompletionCall:
        """Raises _BadRequest (status 400) naming the first field that is wrong."""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _BadRequest(f"request body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise _BadRequest(f"request body is a JSON {type(body).__name__}; expected an "
                              "object")
        for name, allowed in _ONLY.items():
            if name in body and body[name] not in allowed:
                raise _BadRequest(f"{name}={body[name]!r} is not supported by this server "
                                  f"(only {' or '.join(map(repr, allowed))})")
        embeds = _as_list(body.get("prompt_embeds"))
        if embeds and not accept_embeds:
            raise _BadRequest(EMBEDS_DISABLED)
        prompts: list[torch.Tensor | tuple[int, ...]] = []
        for text in embeds:
            try:
                tensor = decode_embeds(text) if isinstance(text, str) else None
            except ValueError as exc:
                raise _BadRequest(str(exc)) from None
            if tensor is None or tensor.shape[1] != hidden:
                shape = "not a string" if tensor is None else f"hidden size {tensor.shape[1]}"
                raise _BadRequest(f"prompt_embeds: {shape}; expected base64 of a tensor "
                                  f"[seq_len, {hidden}]")
            prompts.append(tensor)
        prompts += [_token_ids(p, tokenizer=tokenizer, vocab=vocab)
                    for p in _prompt_list(body.get("prompt"))]
        if not prompts:
            raise _BadRequest("either prompt or prompt_embeds must be given and non-empty")
        stop = _as_list(body.get("stop"))
        if not all(isinstance(s, str) and s for s in stop):
            raise _BadRequest(f"stop={body.get('stop')!r}; expected a non-empty string or a "
                              "list of them")
        return cls(prompts=tuple(prompts),
                   max_tokens=_number(body, "max_tokens", int, 16, low=1),
                   temperature=_number(body, "temperature", float, 1.0, low=0),
                   top_p=_number(body, "top_p", float, 1.0, low=1e-6, high=1.0),
                   seed=_number(body, "seed", int, None, low=-2 ** 63, high=2 ** 63 - 1),
                   stop=tuple(stop),
                   ignore_eos=_flag(body, "ignore_eos"),
                   include_stop=_flag(body, "include_stop_str_in_output"),
                   return_token_ids=_flag(body, "return_token_ids"))


class LLMServer:
    """An :class:`Engine` over ``model``/``tokenizer`` behind a ``ThreadingHTTPServer``.

    The socket is bound at construction (``port=0`` picks a free port; see ``url``);
    ``start`` runs the engine loop and the HTTP server on daemon threads, ``close`` stops
    both (blocking).  Each connection gets a thread; concurrent requests batch together in the
    engine (``prefill_chunk``: prompt positions prefilled per step, 0 = whole prompts;
    ``cuda_graphs``: on CUDA only).  ``accept_embeds=False`` answers ``prompt_embeds`` with
    vLLM's refusal, as a vLLM started without ``--enable-prompt-embeds`` does.
    ``api_key``: required on the ``/v1`` routes (empty: none)."""

    def __init__(self, model, tokenizer, *, max_batch: int, max_seq_len: int,
                 host: str = "127.0.0.1", port: int = 8000, model_name: str = "facestream",
                 accept_embeds: bool = True, queue_size: int = 256,
                 prefill_chunk: int = 512, cuda_graphs: bool = True, api_key: str = "") -> None:
        self.engine = Engine(model, tokenizer, max_batch=max_batch, max_seq_len=max_seq_len,
                             queue_size=queue_size, image_token_id=_PLACEHOLDER,
                             prefill_chunk=prefill_chunk, cuda_graphs=cuda_graphs)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_seq_len = max_seq_len
        self.accept_embeds = accept_embeds
        self.api_key = api_key
        self.vocab, self.hidden = model.get_input_embeddings().weight.shape   # [V, hidden]
        self._httpd = _HTTPServer((host, port), _Handler, app=self)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = {"http_requests": 0, "http_errors": 0}

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, device: str = "cpu",
                       dtype: torch.dtype | None = None, **kwargs) -> LLMServer:
        """Load a transformers LLaMA-family causal LM directory (tokenizer included) and
        serve it; ``dtype`` None = float32 on CPU, the checkpoint's own dtype elsewhere.
        ``model_name`` defaults to the directory's name.  Raises AssetError if it does
        not load."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise AssetError(f"LLM directory {path} has no config.json; expected a "
                             "transformers model directory (run `facestream models pull` "
                             "for the default SmolLM2)")
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else "auto"
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                         local_files_only=True)
        except (OSError, ValueError) as exc:
            raise AssetError(f"LLM directory {path} cannot be loaded "
                             f"({str(exc).splitlines()[0]}); download it again") from None
        kwargs.setdefault("model_name", path.name)
        return cls(model.to(device).eval(), tokenizer, **kwargs)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters (``tokens / steps`` above 2 means requests shared decode
        steps: one request alone makes at most 2 tokens per step) plus http_requests and
        http_errors.  Thread-safe."""
        with self._lock:
            return {**self.engine.stats, **self._counts}

    def start(self) -> None:
        """Serve on a daemon thread; returns at once."""
        if self._thread is None:
            self.engine.start()
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            name="llm-http", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop accepting, cancel what the engine still holds (those requests get 503), and
        release the socket.  Blocking."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.engine.close()
        self._httpd.server_close()

    def __enter__(self) -> LLMServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- request handling (called on connection threads) ------------------------------

    def complete(self, raw: bytes) -> dict[str, Any]:
        """Run one completion body to its answer.  Blocking; raises _BadRequest."""
        call = CompletionCall.parse(raw, tokenizer=self.tokenizer, hidden=self.hidden,
                                    vocab=self.vocab, accept_embeds=self.accept_embeds)
        answer_id = f"cmpl-{uuid.uuid4().hex}"
        futures = []
        for i, prompt in enumerate(call.prompts):
            if isinstance(prompt, torch.Tensor):        # prompt: [seq_len, hidden]
                ids, visual = (_PLACEHOLDER,) * prompt.shape[0], prompt
            else:
                ids, visual = prompt, None
            try:
                futures.append(self.engine.submit(GenerationRequest(
                    f"{answer_id}-{i}", ids, visual=visual, max_new_tokens=call.max_tokens,
                    stop=call.stop, temperature=call.temperature, top_p=call.top_p,
                    seed=call.seed,
                    ignore_eos=call.ignore_eos, include_stop=call.include_stop)))
            except RequestError as exc:
                raise _BadRequest(str(exc)) from None
            except QueueFull as exc:
                raise _BadRequest(str(exc), status=503) from None
        try:
            results = [f.result() for f in futures]
        except CancelledError:
            raise _BadRequest("the server is shutting down; retry on another", 503) from None
        return self._answer(answer_id, call, results)

    def _answer(self, answer_id: str, call: CompletionCall,
                results: list[GenerationResult]) -> dict[str, Any]:
        choices = []
        for i, result in enumerate(results):
            finish = "stop" if result.finish_reason == "eos" else result.finish_reason
            stop_reason = (self._matched_stop(result, call.stop, included=call.include_stop)
                           if result.finish_reason == "stop" else None)
            choices.append({"index": i, "text": result.text, "logprobs": None,
                            "finish_reason": finish, "stop_reason": stop_reason,
                            "token_ids": list(result.token_ids) if call.return_token_ids
                            else None})
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(len(r.token_ids) for r in results)
        return {"id": answer_id, "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens,
                          "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _matched_stop(self, result: GenerationResult, stop: tuple[str, ...], *,
                      included: bool) -> str | None:
        """The stop string that ended ``result`` (its text is cut just before it, or just
        after it when ``included``)."""
        if included:
            return next((s for s in sorted(stop, key=len, reverse=True)
                         if result.text.endswith(s)), None)
        full = self.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)
        rest = full[len(result.text):]
        return next((s for s in stop if rest.startswith(s)), None)

    def count(self, *, error: bool) -> None:
        with self._lock:
            self._counts["http_requests"] += 1
            self._counts["http_errors"] += error


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler, *, app: LLMServer) -> None:
        self.app = app
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def _authorized(self) -> bool:
        """Whether the request may use a /v1 route; if not, it has been answered 401."""
        expected = self.server.app.api_key
        if not expected:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              expected.encode()):
            return True
        self._drain()
        self._error(401, "missing or wrong API key: send Authorization: Bearer <key> (the "
                         "server's llm_api_key)")
        return False

    def do_GET(self) -> None:
        app = self.server.app
        if self.path == "/health":
            self._send(200, {})
        elif self.path.startswith("/v1/") and not self._authorized():
            return
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{
                "id": app.model_name, "object": "model", "created": int(time.time()),
                "owned_by": "facestream", "max_model_len": app.max_seq_len}]})
        else:
            self._error(404, f"no route GET {self.path}; try /v1/models or /health")

    def do_POST(self) -> None:
        if self.path.startswith("/v1/") and not self._authorized():
            return
        if self.path != "/v1/completions":
            self._drain()
            self._error(404, f"no route POST {self.path}; try /v1/completions")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(411, "Content-Length is required")
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, f"request body of {int(length)} bytes exceeds {MAX_BODY_BYTES}")
            return
        try:
            self._send(200, self.server.app.complete(self.rfile.read(int(length))))
        except _BadRequest as exc:
            self._error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 -- a broken engine: say so, keep serving
            log.exception("completion failed")
            self._error(500, f"the engine failed: {type(exc).__name__}: {exc}")

    def _drain(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not length and self.command == "GET":
            return
        if length.isdigit() and int(length) <= MAX_BODY_BYTES:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _error(self, status: int, message: str) -> None:
        kind = ("AuthenticationError" if status == 401 else
                "BadRequestError" if status < 500 else "InternalServerError")
        self._send(status, {"error": {"message": " ".join(message.split()), "type": kind,
                                      "param": None, "code": status}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self.server.app.count(error=status >= 400)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 -- the base's name
        log.debug("%s %s", self.address_string(), format % args)


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _prompt_list(value: Any) -> list:
    """``prompt`` as a list of prompts: a string or a list of ints is one prompt."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(t, int) for t in value)):
        return [value]
    return value if isinstance(value, list) else [value]


def _token_ids(prompt: Any, *, tokenizer, vocab: int) -> tuple[int, ...]:
    if isinstance(prompt, str):
        ids = tuple(tokenizer(prompt).input_ids)
    elif isinstance(prompt, list) and all(type(t) is int for t in prompt):
        ids = tuple(prompt)
    else:
        raise _BadRequest(f"prompt {json.dumps(prompt)[:80]}: expected text, a list of token "
                          "ids, or a list of those")
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise _BadRequest(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
    if not ids:
        raise _BadRequest("a prompt is empty; give at least one token")
    return ids


def _number(body: dict, name: str, kind: type, default, *, low: float,
            high: float = float("inf")) -> Any:
    """``body[name]`` as ``kind`` within ``[low, high]`` (None or absent: ``default``)."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and not float(value).is_integer()) or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        bound = f" >= {low}" if high == float("inf") else f" in {low}..{high}"
        raise _BadRequest(f"{name}={value!r}; expected {what}{bound}")
    return kind(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _BadRequest(f"{name}={value!r}; expected true or false")
    return value
