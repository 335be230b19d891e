"""Generation on llama.cpp: a GGUF model (SmolLM2's) on the CPU, without torch.

:class:`LlamaCppEngine` is a :class:`~facestream.llm.slots.SlotEngine` whose slots are
llama.cpp sequences in one context: each step prefills the admitted prompts and decodes one
token for every running sequence in a single ``llama_decode`` call, so concurrent
descriptions share each pass over the weights (the model is memory-bound on a CPU).  A
shared prompt prefix (the system prompt) is computed once into a sequence of its own and
copied into each slot.  The KV cache is unified: ``max_batch`` sequences of up to
``max_seq_len`` positions share ``max_batch x max_seq_len`` cells.

:class:`GgufTokenizer` is the model's own tokenizer, read from the same file
(``vocab_only`` when nothing else is needed).  Text prompts only: a request with visual
tokens is refused.

:func:`widen_gguf` makes the file it runs: the shipped 4-bit GGUF with its matrices stored
as float16 (``models pull`` does it once).

llama-cpp-python is imported on first use; its C library logs nothing (facestream reports
failures itself, in one line).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from facestream.errors import AssetError, ConfigError
from facestream.llm.admission import shares_prefix
from facestream.llm.detokenize import TextTail
from facestream.llm.drafts import AnswerDrafts
from facestream.llm.slots import Running, SlotEngine, check_sizes

_INIT = threading.Lock()
_LIB = None
_QUIET = None       # the log callback handed to C, kept alive for the process


def _library():
    """``llama_cpp``, with the backend initialised once and its logging silenced."""
    global _LIB, _QUIET
    with _INIT:
        if _LIB is None:
            try:
                import llama_cpp
            except ImportError:
                raise AssetError("llama-cpp-python is not installed; run ./dev setup (or pip "
                                 "install facestream with its dependencies)") from None
            _QUIET = llama_cpp.llama_log_callback(lambda level, text, data: None)
            llama_cpp.llama_log_set(_QUIET, None)
            llama_cpp.llama_backend_init()
            _LIB = llama_cpp
        return _LIB


def _load_model(path: Path, *, vocab_only: bool):
    lib = _library()
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"model {path} is missing; run `facestream models pull`")
    params = lib.llama_model_default_params()
    params.vocab_only = vocab_only
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise AssetError(f"model {path} cannot be loaded by llama.cpp; run `facestream models "
                         "pull --force`")
    return lib, model


class GgufTokenizer:
    """A GGUF model's tokenizer: ``encode`` parses special tokens (``<|im_start|>``) in the
    text and adds none of its own; ``decode`` has the transformers signature TextTail uses."""

    def __init__(self, lib, vocab) -> None:
        self._lib, self._vocab = lib, vocab
        self.eos_token_id = int(lib.llama_vocab_eos(vocab))

    @classmethod
    def from_file(cls, path: Path) -> "GgufTokenizer":
        lib, model = _load_model(path, vocab_only=True)
        tokenizer = cls(lib, lib.llama_model_get_vocab(model))
        tokenizer._model = model                  # the vocabulary lives in the model
        return tokenizer

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        tokens = (ctypes.c_int32 * room)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), tokens, room, False, True)
        if n < 0:                                  # cannot happen: a token is >= 1 byte
            raise RuntimeError(f"llama.cpp tokenizer needs {-n} tokens for {len(data)} bytes")
        return list(tokens[:n])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if not ids:
            return ""
        tokens = (ctypes.c_int32 * len(ids))(*ids)
        room = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            n = self._lib.llama_detokenize(self._vocab, tokens, len(ids), buf, room, False,
                                           not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            room = -n + 16


class LlamaCppEngine(SlotEngine):
    """Continuous batching over llama.cpp (a
    :class:`~facestream.llm.requests.GenerationBackend`).  ``threads`` 0: one per CPU."""

    def __init__(self, gguf_path: Path, *, max_batch: int = 8, max_seq_len: int = 512,
                 queue_size: int = 256, threads: int = 0,
                 prefix_ids: tuple[int, ...] = (), draft_tokens: int = 0) -> None:
        check_sizes(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size)
        lib, model = _load_model(gguf_path, vocab_only=False)
        self._lib, self._model = lib, model
        vocab = lib.llama_model_get_vocab(model)
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        eos = frozenset(t for t in range(n_vocab) if lib.llama_vocab_is_eog(vocab, t))
        self.tokenizer = GgufTokenizer(lib, vocab)
        super().__init__(max_batch=max_batch, max_seq_len=max_seq_len, queue_size=queue_size,
                         vocab=n_vocab, hidden=None, image_token_id=None, has_tokenizer=True,
                         eos=eos)
        self._n_vocab = n_vocab
        if draft_tokens < 0:
            raise ConfigError(f"LLM engine: draft_tokens={draft_tokens}; need >= 0")
        self._draft_tokens = draft_tokens
        self._drafts = self._fresh_drafts()
        self._counts.update(drafted=0, draft_accepted=0)
        self._prefix_ids = tuple(prefix_ids)
        if len(self._prefix_ids) >= max_seq_len:
            raise AssetError(f"LLM engine: prefix_ids ({len(prefix_ids)} tokens) must be "
                             f"shorter than max_seq_len {max_seq_len}")
        self._prefix_seq = max_batch                   # the shared prefix's own sequence
        cells = max_batch * max_seq_len + len(self._prefix_ids)
        params = lib.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = cells                          # every admitted prompt in one call
        params.n_ubatch = min(cells, 512)
        params.n_seq_max = max_batch + 1
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(model, params)
        if not self._ctx:
            raise AssetError(f"llama.cpp could not make a context of {cells} positions for "
                             f"{gguf_path}; lower llm_max_batch or llm_max_seq_len")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(cells, 0, 1)
        if self._prefix_ids:
            self._run([(self._prefix_seq, self._prefix_ids, 0, 1)])

    # ---- the model --------------------------------------------------------------------

    def _run(self, pieces: list[tuple[int, tuple[int, ...] | list[int], int, int]]
             ) -> np.ndarray:
        """One ``llama_decode`` over ``pieces`` of (sequence, tokens, first position, n): the
        logits after each of a piece's last ``n`` tokens, pieces one after another:
        [sum of n, vocab]."""
        batch, n = self._batch, 0
        rows = []
        for seq, tokens, start, wanted in pieces:
            for offset, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = start + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = offset >= len(tokens) - wanted
                if batch.logits[n]:
                    rows.append(n)
                n += 1
        batch.n_tokens = n
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp decode failed (status {status}) on {n} tokens")
        out = np.empty((len(rows), self._n_vocab), np.float32)
        for row, index in enumerate(rows):
            pointer = self._lib.llama_get_logits_ith(self._ctx, index)
            out[row] = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        return out

    def _admit(self) -> list[tuple[int, str]]:
        admitted = self._take_queued()
        if not admitted:
            return []
        pieces, prefilled, prefix_hits = [], 0, 0
        for slot, queued in admitted:
            request = queued.request
            ids, start = request.prompt_ids, 0
            if shares_prefix(ids, self._prefix_ids):
                start, prefix_hits = len(self._prefix_ids), prefix_hits + 1
                self._lib.llama_memory_seq_cp(self._memory, self._prefix_seq, slot, 0, start)
            pieces.append((slot, ids[start:], start))
            prefilled += len(ids) - start
            rng = (np.random.default_rng(request.seed) if request.temperature > 0 else None)
            tail = TextTail(self.tokenizer, request.stop, include_stop=request.include_stop)
            self._slots[slot] = Running(queued, len(ids), tail, rng)
        self._count(prefill_tokens=prefilled, prefix_hits=prefix_hits)
        return self._step(pieces)

    def _decode(self, active: list[int]) -> list[tuple[int, str]]:
        pieces = []
        for b in active:
            running = self._slots[b]
            pieces.append((b, (running.tokens[-1],), running.length))
            running.length += 1
        return self._step(pieces)

    def _step(self, pieces: list[tuple[int, tuple[int, ...] | list[int], int]]
              ) -> list[tuple[int, str]]:
        """One pass over (slot, tokens, first position) pieces whose tokens end in the
        slot's last chosen (or prompt) token, the slot's ``length`` already counting them;
        then each slot's next token.  With ``draft_tokens``, a greedy slot's piece also
        carries the tokens :class:`~facestream.llm.drafts.AnswerDrafts` proposes after it:
        the slot keeps its greedy tokens up to and including the first that differs from the
        draft, and its cache loses the positions after them."""
        drafts = []
        for i, (b, tokens, start) in enumerate(pieces):
            running = self._slots[b]
            request = running.queued.request
            room = min(self._draft_tokens, request.max_new_tokens - len(running.tokens) - 1,
                       self._max_seq_len - running.length - 1)
            draft = (self._drafts.propose(request.prompt_ids, running.tokens, room)
                     if self._drafts is not None and request.temperature == 0 else [])
            pieces[i] = (b, (*tokens, *draft), start, len(draft) + 1)
            drafts.append(draft)
        logits = self._run(pieces)
        finished, row, drafted, kept = [], 0, 0, 0
        for (b, *_), draft in zip(pieces, drafts):
            rows = logits[row:row + len(draft) + 1]
            row += len(draft) + 1
            if not draft:
                finished += self._choose([b], rows)
                continue
            chosen = rows.argmax(axis=1)
            agree = 0
            while agree < len(draft) and draft[agree] == chosen[agree]:
                agree += 1
            drafted, kept = drafted + len(draft), kept + agree
            running = self._slots[b]
            running.length += agree                 # the draft tokens the model agreed with
            self._lib.llama_memory_seq_rm(self._memory, b, running.length, -1)
            for token in chosen[:agree + 1]:
                done = self._accept([b], [int(token)])
                if done:
                    finished += done
                    break
        self._count(drafted=drafted, draft_accepted=kept)
        return finished

    def _choose(self, slots: list[int], logits: np.ndarray) -> list[tuple[int, str]]:
        """Greedy (temperature 0) or sampled with the request's seeded generator."""
        chosen = []
        for row, b in enumerate(slots):
            request, rng = self._slots[b].queued.request, self._slots[b].state
            if request.temperature > 0:
                scaled = logits[row].astype(np.float64) / request.temperature
                probs = np.exp(scaled - scaled.max())
                probs /= probs.sum()
                if request.top_p < 1:         # the nucleus, as facestream.llm.engine.nucleus
                    order = np.argsort(-probs, kind="stable")
                    before = np.cumsum(probs[order]) - probs[order]
                    probs[order[before >= request.top_p]] = 0
                    probs /= probs.sum()
                chosen.append(int(rng.choice(self._n_vocab, p=probs)))
            else:
                chosen.append(int(logits[row].argmax()))
        return self._accept(slots, chosen)

    def forget_drafts(self) -> None:
        """Drop the recent answers drafts are taken from.  Call between steps (the loop
        thread's, or with no loop running)."""
        self._drafts = self._fresh_drafts()

    def _fresh_drafts(self) -> AnswerDrafts | None:
        # A match of one token drafts too often wrongly to pay (docs/PERFORMANCE.md).
        return AnswerDrafts(min_match=2) if self._draft_tokens else None

    def _release(self, slot: int, reason: str):
        running = self._slots[slot]
        if self._drafts is not None and running.queued.request.temperature == 0:
            self._drafts.observe(running.queued.request.prompt_ids, running.tokens)
        return super()._release(slot, reason)

    def _freed(self, slot: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)

    def _closed(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._lib.llama_model_free(self._model)
            self._ctx = None


def widen_gguf(source: Path, target: Path) -> Path:
    """``source`` (a GGUF with quantised matrices) rewritten with every matrix as float16
    (vectors as float32) at ``target``, metadata and tokenizer unchanged; replaced
    atomically.  Numpy and the ``gguf`` package only.

    Why: llama.cpp multiplies 4-bit matrices with activations rounded to 8 bits, which moves
    SmolLM2-135M's logits by up to ~0.7 and changes its greedy sentence on most prompts; on
    float16 matrices it keeps the activations in float16 and writes what the fp32 reference
    writes (docs/PERFORMANCE.md, "Descriptions on llama.cpp").  The weights are the same
    4-bit values, so the model is unchanged."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    writer = gguf.GGUFWriter(str(partial), arch)
    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE}
    for entry in reader.fields.values():
        if entry.name in skip or entry.name.startswith("GGUF."):
            continue                    # written by the writer itself
        kind = entry.types[0]
        writer.add_key_value(entry.name, entry.contents(), kind,
                             sub_type=entry.types[-1] if kind == gguf.GGUFValueType.ARRAY
                             else None)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for tensor in reader.tensors:
        data = tensor.data if tensor.tensor_type in plain else \
            quants.dequantize(tensor.data, tensor.tensor_type)
        data = np.asarray(data, np.float32)
        writer.add_tensor(tensor.name, data.astype(np.float16) if data.ndim == 2 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)
    return target
