"""The compact profile's descriptions side by side: llama.cpp (the default, the float16 copy
of the shipped GGUF) against the fp32 reference on the torch engine, on the held facts lines
of ``tests/llm/test_llamacpp.py``.  Greedy, first sentence, 40 new tokens at most.  Prints a
Markdown table (the one in docs/PERFORMANCE.md) and the agreement.  Needs the ``torch``
extra (``./dev setup``) for the reference.

    .venv/bin/python bench/descriptions_side_by_side.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facestream import assets  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.llm.smollm import SmolDescriber  # noqa: E402
from tests.llm.test_llamacpp import FACTS  # noqa: E402


def main() -> None:
    cache = Settings.load().cache_dir
    llama = SmolDescriber(assets.require(cache, assets.SMOLLM_F16), runtime="llamacpp",
                          max_new_tokens=40, threads=1)
    torch = SmolDescriber(assets.require_dir(cache, assets.SMOLLM_DIR,
                                             marker="model.safetensors"),
                          runtime="torch", max_new_tokens=40, threads=1)
    ours, reference = llama.describe(FACTS), torch.describe(FACTS)
    print("| facts | fp32 reference (torch) | llama.cpp, float16 | same |")
    print("|---|---|---|---|")
    for facts, a, b in zip(FACTS, reference, ours):
        print(f"| {facts} | {a} | {b} | {'yes' if a == b else 'no'} |")
    same = sum(a == b for a, b in zip(ours, reference))
    print(f"\nsame first sentence: {same} of {len(FACTS)}")


if __name__ == "__main__":
    main()
