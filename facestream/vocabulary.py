"""The words every layer shares: analysis profiles and Face-LLaVA tasks.

One list each, so the settings, the stream registry, the evaluation harness and the language
stage cannot disagree about what a profile or a task is called.
"""

from __future__ import annotations

# Analysis profiles: ``compact`` runs on a CPU from bundled weights; ``facellava`` serves the
# released Face-LLaVA checkpoint (vision path + language model).
PROFILES = ("compact", "facellava")

# The questions Face-LLaVA was instruction-tuned on, in the paper's order.
TASKS = ("expression", "action_units", "attributes", "age", "deepfake")

# Tasks asked about a window's frames as a video; the others about one image (the window's
# middle frame), as the model was trained.
VIDEO_TASKS = frozenset({"expression", "deepfake"})


def task_media(task: str) -> str:
    """"video" or "image": how ``task`` looks at a window."""
    return "video" if task in VIDEO_TASKS else "image"
