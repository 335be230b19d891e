"""Face-LLaVA prompts: the Vicuna v1 conversation template, task questions, placeholders.

Facts taken from the public Face-LLaVA code (``ihp-lab/Face-LLaVA``, a Video-LLaVA fork):

* conversation mode ``llava_v1`` (``facellava/conversation.py``): the system sentence below,
  roles ``USER`` / ``ASSISTANT``, separator style TWO with ``sep=" "`` and ``sep2="</s>"``.
  A one-turn prompt is therefore ``SYSTEM + " " + "USER: " + message + " " + "ASSISTANT:"``
  and generation stops at ``"</s>"``.
* placeholders (``inference.py``): an image is ``"<image>\\n" + question``; a video is its
  frames' placeholders joined by single spaces, then a newline, then the question
  (``" ".join(["<image>"] * 8) + "\\n" + question`` for the 8-frame video tower).  Each
  ``<image>`` is replaced by one frame's visual tokens (256 for the image tower, 257 per frame
  for the video tower, so 8 frames = 2,056 tokens).
* tokenization (``facellava/mm_utils.py``): the text between placeholders is tokenized piece
  by piece; only the first piece keeps the tokenizer's BOS.  :func:`tokenize_prompt`
  reproduces that, then expands every placeholder to one id per visual token.
* questions: ``assets/good_prompts/*.txt`` and the comments in ``inference.py``.  The released
  lists word each task for one medium (expression and deepfake: "video"; age, attributes and
  action units: "image"/"picture").  :data:`QUESTIONS` keeps each reference sentence for its
  medium and uses the same sentence with the medium word swapped for the other one; those
  swapped sentences are facestream's wording, not the reference's.

Pure Python apart from the tokenizer object a caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from facestream.vocabulary import TASKS

IMAGE_PLACEHOLDER = "<image>"
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = ("USER", "ASSISTANT")
SEP = " "
SEP2 = "</s>"
STOP = SEP2            # the stop string of an answer
# Every prompt starts with this text and then a placeholder, so an engine can compute its
# KV cache once: tokenize it with tokenize_prompt(tokenizer, Prompt(SYSTEM_PREFIX, 0), ...).
SYSTEM_PREFIX = f"{SYSTEM}{SEP}{ROLES[0]}: "

# task -> (question for a video, question for one image).
QUESTIONS: dict[str, tuple[str, str]] = {
    # emotion_questions.txt (video); the image form is facestream's.
    "expression": ("What emotion is shown in the video?",
                   "What emotion is shown in the image?"),
    # action_units.txt (image); the video form is facestream's.
    "action_units": ("Which facial action units appear in this video?",
                     "Which facial action units appear in this image?"),
    # facial_attribute.txt (image); the video form is facestream's.
    "attributes": ("Identify the visible features of the face in the video.",
                   "Identify the visible features of the face in the image."),
    # age.txt (picture); the video form is facestream's.
    "age": ("How old do you think the person in the video is, and what makes you think so?",
            "How old do you think the person in the picture is, and what makes you think so?"),
    # deepfake_questions.txt (video); the image form is facestream's.
    "deepfake": ("Is the video authentic, or is it a fake?",
                 "Is the image authentic, or is it a fake?"),
}


@dataclass(frozen=True)
class Prompt:
    """A prompt's text (with ``<image>`` placeholders) and how many images it expects.

    ``images`` must equal the number of placeholders in ``text``; checked here, once.
    """

    text: str
    images: int

    def __post_init__(self) -> None:
        found = self.text.count(IMAGE_PLACEHOLDER)
        if self.images < 0 or found != self.images:
            raise ValueError(f"prompt declares {self.images} images but its text has "
                             f"{found} {IMAGE_PLACEHOLDER} placeholders")


def build_prompt(task: str, *, frames: int = 8, question: str | None = None) -> Prompt:
    """The Vicuna v1 prompt for ``task`` over ``frames`` images, ending with ``"ASSISTANT:"``.

    ``frames`` = 1 is the image form (``<image>\\n`` + question), more is the video form.
    ``question`` replaces the task's default question (it must not contain ``<image>``).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if frames < 1:
        raise ValueError(f"frames={frames}: a Face-LLaVA prompt needs at least one image")
    if question is None:
        question = QUESTIONS[task][0 if frames > 1 else 1]
    question = question.strip()
    if not question or IMAGE_PLACEHOLDER in question:
        raise ValueError(f"question {question!r}: expected non-empty text without "
                         f"{IMAGE_PLACEHOLDER}")
    message = " ".join([IMAGE_PLACEHOLDER] * frames) + "\n" + question
    text = f"{SYSTEM_PREFIX}{message}{SEP}{ROLES[1]}:"
    return Prompt(text, frames)


def expand_placeholders(token_ids: Sequence[int], *, image_token_id: int,
                        tokens_per_image: int) -> list[int]:
    """Each ``image_token_id`` in ``token_ids`` becomes ``tokens_per_image`` copies of it."""
    if tokens_per_image < 1:
        raise ValueError(f"tokens_per_image={tokens_per_image}: expected >= 1")
    out: list[int] = []
    for token in token_ids:
        if token == image_token_id:
            out.extend([image_token_id] * tokens_per_image)
        else:
            out.append(token)
    return out


def tokenize_prompt(tokenizer: Any, prompt: Prompt, *, image_token_id: int,
                    tokens_per_image: int) -> list[int]:
    """Token ids of ``prompt`` with ``tokens_per_image`` placeholder ids per ``<image>``.

    The pieces between placeholders are tokenized separately without special tokens; the
    tokenizer's BOS is put once at the start when the tokenizer adds one by itself (LLaMA and
    Vicuna do, SmolLM2 does not).  Raises ValueError, naming both numbers, when the result would
    not hold exactly ``prompt.images * tokens_per_image`` placeholder ids (``image_token_id``
    is also an id the text itself tokenizes to).
    """
    pieces = prompt.text.split(IMAGE_PLACEHOLDER)
    ids: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and tokenizer("").input_ids[:1] == [bos]:
        ids.append(bos)
    for i, piece in enumerate(pieces):
        if i > 0:
            ids.append(image_token_id)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False).input_ids)
    found = ids.count(image_token_id)
    if found != prompt.images:
        raise ValueError(f"prompt has {found * tokens_per_image} image placeholder tokens "
                         f"({found} x {tokens_per_image}) but {prompt.images} images x "
                         f"{tokens_per_image} = {prompt.images * tokens_per_image} visual tokens "
                         f"are expected; the text itself tokenizes to image_token_id "
                         f"{image_token_id}: pick an id the text never produces")
    return expand_placeholders(ids, image_token_id=image_token_id,
                               tokens_per_image=tokens_per_image)
