"""Face-LLaVA's sentencepiece tokenizer against the slow LLaMA tokenizer's rules.

transformers 5 has no slow (sentencepiece-backed) LLaMA tokenizer any more, and its
conversion of ``tokenizer.model`` needs a protobuf this environment cannot have, so the
reference side here is written from the rules of transformers 4.31's ``LlamaTokenizer``
(``use_fast=False``, what Face-LLaVA loads) over ``sentencepiece`` itself: BOS first, each
text chunk between special-token strings encoded on its own by the sentencepiece model, and
the public ``tokenizer_image_token`` split at ``<image>``.  The model is a tiny LLaMA-style
BPE trained in ``tests.tiny_facellava``.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece

from facestream.encoder.facellava.tokenizer import SentencePieceTokenizer
from facestream.errors import AssetError
from facestream.llm.detokenize import TextTail
from facestream.llm.prompts import build_prompt, tokenize_prompt
from tests.tiny_facellava import sentencepiece_model

IMAGE_TOKEN_INDEX = -200
TEXTS = ["A chat between a curious human", " ASSISTANT:", " ", "  two leading spaces",
         "\nWhat emotion is shown in the video?", "héllo wörld 😀 42", "", "tabs\tand\nlines"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp")
    (path / "tokenizer.model").write_bytes(sentencepiece_model())
    return path


@pytest.fixture(scope="module")
def sp(model_dir):
    return sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def tok(model_dir):
    return SentencePieceTokenizer.from_dir(model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_is_bos_then_the_sentencepiece_ids(tok, sp, text):
    assert tok(text).input_ids == [sp.bos_id(), *sp.encode(text)]
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)


def test_llama_special_ids_and_vocabulary(tok, sp):
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, None)
    assert len(tok) == sp.get_piece_size()


def test_a_space_led_piece_keeps_its_own_dummy_prefix(tok):
    """The fact that makes a converted fast tokenizer differ: " " alone is ``▁▁`` (dummy
    prefix + the space), one whitespace-only piece, not ``▁``."""
    assert tok.convert_ids_to_tokens(tok(" ", add_special_tokens=False).input_ids) == ["▁▁"]
    pieces = tok.convert_ids_to_tokens(tok(" ASSISTANT:", add_special_tokens=False).input_ids)
    assert "".join(pieces) == "▁▁ASSISTANT:"


def test_special_token_strings_are_split_out_and_each_chunk_encoded_alone(tok, sp):
    text = "Hello</s>world <unk>x<s>"
    expected = [1, *sp.encode("Hello"), 2, *sp.encode("world "), 0, *sp.encode("x"), 1]
    assert tok(text).input_ids == expected
    # encoding the chunks alone differs from encoding the text whole: "world" gets its own ▁
    assert sp.encode("world ")[0] != sp.encode("Hello world")[-1]


def reference_tokenizer_image_token(tokenizer, prompt: str) -> list[int]:
    """The public ``tokenizer_image_token`` rule: split at ``<image>``, tokenize each chunk
    with BOS, keep the first chunk's BOS only, one IMAGE_TOKEN_INDEX between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks[0][:1] == [tokenizer.bos_token_id] else 0
    ids = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


@pytest.mark.parametrize("task, frames", [("expression", 8), ("age", 1), ("deepfake", 8)])
def test_prompts_tokenize_as_the_reference_does(tok, sp, task, frames):
    prompt = build_prompt(task, frames=frames)
    ids = tokenize_prompt(tok, prompt, image_token_id=IMAGE_TOKEN_INDEX, tokens_per_image=1)
    assert ids == reference_tokenizer_image_token(tok, prompt.text)
    assert ids.count(IMAGE_TOKEN_INDEX) == frames and ids[0] == sp.bos_id()
    # Between two video placeholders the single space is the whitespace piece ▁▁.
    if frames > 1:
        first = ids.index(IMAGE_TOKEN_INDEX)
        assert tok.convert_ids_to_tokens([ids[first + 1]]) == ["▁▁"]
        assert ids[first + 2] == IMAGE_TOKEN_INDEX


@pytest.mark.parametrize("text", [t for t in TEXTS if t and not t.startswith(" ")])
def test_decode_inverts_encode(tok, text):
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_decode_writes_special_tokens_as_the_slow_tokenizer_does(tok, sp):
    ids = [1, *sp.encode("Hi"), 2, 2, *sp.encode("there")]
    assert tok.decode(ids) == "<s> Hi</s></s>there"
    assert tok.decode(ids, skip_special_tokens=True) == "Hi there"     # one run: "▁there"


def test_incremental_decoding_equals_a_full_decode(tok):
    """The engine's TextTail decodes token by token; with this tokenizer it must give the
    full decode's text (spaces at word starts, multi-byte characters) and stop at "</s>"."""
    text = "The person looks happy 😀 and calm.  Her eyes are wide open"
    ids = tok(text, add_special_tokens=False).input_ids
    tail = TextTail(tok, ("</s>",))
    assert not any(tail.push(t) for t in ids)
    assert tail.text == text
    stop = TextTail(tok, ("open",))
    assert any(stop.push(t) for t in ids) and stop.text == text[:text.index("open")]


def test_config_files_set_flags_and_special_tokens(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_eos_token": True, "legacy": False,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False},
        "pad_token": None, "tokenizer_class": "LlamaTokenizer"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<unk>"}))
    tok = SentencePieceTokenizer.from_dir(tmp_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert tok("hi").input_ids == [*sp.encode("hi"), 2]
    assert tok.pad_token_id is None and tok.legacy is False      # the config file wins


def _write(name, content):
    def damage(path):
        (path / name).write_text(content)
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "tokenizer.model").write_bytes(b"not a model"), "is not a sentencepiece model"),
    (_write("tokenizer_config.json", "{"), "tokenizer_config.json is not readable JSON"),
    (_write("special_tokens_map.json", "[1]"), "expected a JSON object"),
    (_write("added_tokens.json", '{"<image>": 768}'), "adds tokens (<image>)"),
    (_write("tokenizer_config.json", '{"eos_token": "<|end|>"}'), "eos_token '<|end|>' is not a piece"),
    (_write("tokenizer_config.json", '{"bos_token": 5}'), "special token 5"),
])
def test_bad_tokenizer_files_are_one_line_asset_errors(tmp_path, damage, message):
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model())
    damage(tmp_path)
    with pytest.raises(AssetError) as err:
        SentencePieceTokenizer.from_dir(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
