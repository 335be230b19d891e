"""Face-LLaVA prompts against the reference template and tokenization, re-stated here.

The SmolLM2 tokenizer stands in for Vicuna's LLaMA tokenizer (no LLaMA tokenizer file is
available offline); it is loaded twice, as shipped (no BOS) and with ``add_bos_token=True``
(BOS on every call, as LLaMA tokenizers do).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from facestream.llm import prompts
from facestream.llm.prompts import (SYSTEM_PREFIX, Prompt, build_prompt, expand_placeholders,
                                    tokenize_prompt)
from facestream.vocabulary import TASKS

IMAGE_ID = -200          # the reference's IMAGE_TOKEN_INDEX: an id no text produces


def reference_prompt(system: str, message: str) -> str:
    """Vicuna v1, separator style TWO, one user turn then an open assistant turn."""
    seps = [" ", "</s>"]
    text = system + seps[0]
    for i, (role, msg) in enumerate([("USER", message), ("ASSISTANT", None)]):
        text += f"{role}: {msg}{seps[i % 2]}" if msg else f"{role}:"
    return text


def reference_ids(text: str, tokenizer, *, per_image: int = 1) -> list[int]:
    """The reference's tokenizer_image_token: chunks tokenized with special tokens, the first
    chunk's BOS kept, the others' dropped, one IMAGE_ID between chunks; then (the model's
    splice) each IMAGE_ID stands for ``per_image`` visual tokens, written out here."""
    chunks = [tokenizer(chunk).input_ids for chunk in text.split("<image>")]
    offset = 1 if chunks and chunks[0][:1] == [tokenizer.bos_token_id] else 0
    ids = chunks[0][:1] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids += [IMAGE_ID] * per_image
        ids.extend(chunk[offset:])
    return ids


class CharTokenizer:
    """A tokenizer whose ids can be checked by hand: one id per character, ``ord(c)``; with
    ``bos`` it puts BOS (id 1) first when asked for special tokens, as LLaMA's does."""

    def __init__(self, *, bos: bool) -> None:
        self.bos = bos
        self.bos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        ids = [ord(c) for c in text]
        return SimpleNamespace(input_ids=([1] if self.bos and add_special_tokens else []) + ids)


@pytest.fixture(scope="module", params=["as_shipped", "with_bos"])
def tokenizer(request, settings):
    # SmolLM2's tokenizer, standing in for the Vicuna (LLaMA) tokenizer.
    from transformers import AutoTokenizer

    extra = {"add_bos_token": True} if request.param == "with_bos" else {}
    return AutoTokenizer.from_pretrained(settings.cache_dir / "models" / "smollm2-135m-instruct",
                                         **extra)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("frames", [1, 8])
def test_prompt_text_is_the_vicuna_v1_template(task, frames):
    prompt = build_prompt(task, frames=frames)
    question = prompts.QUESTIONS[task][0 if frames > 1 else 1]
    images = " ".join(["<image>"] * frames)
    assert prompt.text == reference_prompt(prompts.SYSTEM, f"{images}\n{question}")
    assert prompt.images == frames
    assert prompt.text.startswith(SYSTEM_PREFIX)
    assert prompt.text.endswith(" ASSISTANT:")


def test_system_sentence_is_the_llava_v1_one():
    assert prompts.SYSTEM == (
        "A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human's questions.")


def test_own_question_replaces_the_default():
    prompt = build_prompt("age", frames=1, question="  Estimate the age.  ")
    assert prompt.text.endswith("USER: <image>\nEstimate the age. ASSISTANT:")


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "mood"}, "expected one of expression"),
    ({"task": "age", "frames": 0}, "at least one image"),
    ({"task": "age", "question": "<image> how old?"}, "without <image>"),
    ({"task": "age", "question": "   "}, "non-empty"),
])
def test_bad_prompt_requests_fail(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_prompt(kwargs.pop("task"), **kwargs)


def test_prompt_checks_its_placeholder_count():
    with pytest.raises(ValueError, match="declares 2 images but its text has 1"):
        Prompt("USER: <image>\nhi", 2)


@pytest.mark.parametrize("ids, per_image, expected", [
    ([5, IMAGE_ID, 6], 3, [5, IMAGE_ID, IMAGE_ID, IMAGE_ID, 6]),
    ([IMAGE_ID, IMAGE_ID], 2, [IMAGE_ID] * 4),
    ([1, 2, 3], 4, [1, 2, 3]),
    ([], 4, []),
])
def test_expand_placeholders(ids, per_image, expected):
    assert expand_placeholders(ids, image_token_id=IMAGE_ID, tokens_per_image=per_image) == expected


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("frames, per_image", [(8, 257), (1, 256)])
def test_tokenize_matches_the_reference_then_expands(tokenizer, task, frames, per_image):
    prompt = build_prompt(task, frames=frames)
    ids = tokenize_prompt(tokenizer, prompt, image_token_id=IMAGE_ID, tokens_per_image=per_image)
    assert ids == reference_ids(prompt.text, tokenizer, per_image=per_image)
    assert ids.count(IMAGE_ID) == frames * per_image          # 8 x 257 = 2,056 for a video
    bos = tokenizer.bos_token_id
    assert ids.count(bos) == (1 if tokenizer("x").input_ids[0] == bos else 0)
    text_ids = [t for t in ids if t != IMAGE_ID]
    decoded = tokenizer.decode(text_ids, skip_special_tokens=True)
    assert decoded == prompt.text.replace("<image>", "")


# "U: <image> <image>\nQ A:" by hand: U=85 :=58 space=32 newline=10 Q=81 A=65; BOS=1 once.
IMG3 = [IMAGE_ID] * 3


@pytest.mark.parametrize("bos, expected", [
    (True, [1, 85, 58, 32, *IMG3, 32, *IMG3, 10, 81, 32, 65, 58]),
    (False, [85, 58, 32, *IMG3, 32, *IMG3, 10, 81, 32, 65, 58]),
])
def test_tokenize_a_tiny_prompt_by_hand(bos, expected):
    ids = tokenize_prompt(CharTokenizer(bos=bos), Prompt("U: <image> <image>\nQ A:", 2),
                          image_token_id=IMAGE_ID, tokens_per_image=3)
    assert ids == expected


def test_video_prompt_text_by_hand():
    assert build_prompt("deepfake", frames=2).text == (
        "A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human's questions. "
        "USER: <image> <image>\nIs the video authentic, or is it a fake? ASSISTANT:")


def test_system_prefix_ids_are_a_prefix_of_every_prompt(tokenizer):
    prefix = tokenize_prompt(tokenizer, Prompt(SYSTEM_PREFIX, 0), image_token_id=IMAGE_ID,
                             tokens_per_image=257)
    for task in TASKS:
        for frames in (1, 8):
            ids = tokenize_prompt(tokenizer, build_prompt(task, frames=frames),
                                  image_token_id=IMAGE_ID, tokens_per_image=257)
            assert ids[:len(prefix)] == prefix
            assert ids[len(prefix)] == IMAGE_ID


def test_placeholder_id_that_the_text_produces_is_reported(tokenizer):
    prompt = build_prompt("expression", frames=8)
    clash = tokenizer(" USER", add_special_tokens=False).input_ids[0]   # appears in the text
    with pytest.raises(ValueError, match=r"has 2313 image placeholder tokens \(9 x 257\) "
                                         r"but 8 images x 257 = 2056 visual tokens"):
        tokenize_prompt(tokenizer, prompt, image_token_id=clash, tokens_per_image=257)
