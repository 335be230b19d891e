"""Speculative decoding on the compact profile's describer: drafts from recent answers vs none.

Two :class:`facestream.llm.smollm.SmolDescriber` s on llama.cpp (the float16 SmolLM2 file
``models pull`` writes), in this process, pinned to one core with one thread each: ``plain``
(``draft_tokens=0``) and ``drafted`` (``--draft-tokens``, default the setting's 6).  The
workload is what a worker's describer sees: ``--tracks`` people, each described
``--windows`` times as its expression changes (the same gender, an age within 2 years, two or
three expressions, a confidence that moves), one request at a time, facts lines as
:func:`facestream.llm.smollm.facts` writes them.

Protocol: a first pass of both sides on one workload (the drafted side starts with no history:
the *cold* figures), then ``--rounds`` interleaved rounds (order alternating), each on a new
workload (seeded, the same for both sides).  Per side and round: CPU seconds per description;
for the drafted side, tokens per pass over the weights and the share of drafted tokens kept;
and how many of its sentences equal the plain side's.  Medians with min-max; the ratio is
drafted / plain CPU per description, per round.

    .venv/bin/python bench/bench_drafts.py [--rounds 3] [--tracks 8] [--windows 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facestream import assets  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.llm.smollm import SmolDescriber  # noqa: E402

EXPRESSIONS = ("happy", "neutral", "sad", "surprise", "angry", "fear", "disgust")


def workload(seed: int, tracks: int, windows: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(tracks):
        who, age = rng.choice(("a woman", "a man")), rng.randint(15, 75)
        shown = rng.sample(EXPRESSIONS, rng.choice((2, 3)))
        for _ in range(windows):
            label = rng.choice(shown)
            line = (f"{who}, about {age + rng.randint(-2, 2)} years old; expression: {label} "
                    f"({rng.randint(35, 95)}%)")
            if label == "happy" and rng.random() < 0.5:
                line += "; action units: AU12 3.1, AU25 2.4"
            lines.append(line)
    return lines


def run(describer: SmolDescriber, lines: list[str]) -> tuple[float, list[str], dict]:
    before = dict(describer.stats)
    start = time.process_time()
    texts = [describer.describe([line])[0] for line in lines]
    seconds = (time.process_time() - start) / len(lines)
    stats = {k: describer.stats[k] - before[k] for k in ("steps", "tokens", "drafted",
                                                         "draft_accepted")}
    return seconds, texts, stats


def spread(values: list[float], digits: int = 3) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--draft-tokens", type=int, default=Settings().llm_draft_tokens)
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    model = assets.require(Settings.load().cache_dir, assets.SMOLLM_F16)
    sides = {"plain": SmolDescriber(model, threads=1, draft_tokens=0),
             "drafted": SmolDescriber(model, threads=1, draft_tokens=args.draft_tokens)}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.tracks} tracks x {args.windows} "
          f"windows per workload; drafted side: {args.draft_tokens} tokens per step")

    def report(label: str, results: list[dict]) -> None:
        ratios = [r["drafted"][0] / r["plain"][0] for r in results]
        passes = [r["drafted"][2]["tokens"] / r["drafted"][2]["steps"] for r in results]
        kept = [r["drafted"][2]["draft_accepted"] / max(1, r["drafted"][2]["drafted"])
                for r in results]
        same = [sum(a == b for a, b in zip(r["drafted"][1], r["plain"][1])) / len(r["plain"][1])
                for r in results]
        print(f"{label}: CPU s per description plain {spread([r['plain'][0] for r in results])}"
              f", drafted {spread([r['drafted'][0] for r in results])}; "
              f"ratio drafted/plain {spread(ratios)}; tokens per pass {spread(passes, 2)} "
              f"(plain 1.00); drafted tokens kept {spread(kept, 2)}; "
              f"same sentence as plain {spread(same, 2)}")

    first = workload(0, args.tracks, args.windows)
    report("cold (a fresh engine's first descriptions)",
           [{name: run(d, first) for name, d in sides.items()}])
    rounds = []
    for i in range(args.rounds):
        lines = workload(i + 1, args.tracks, args.windows)
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        rounds.append({name: run(sides[name], lines) for name in order})
    report(f"warm ({args.rounds} rounds, each a new workload)", rounds)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
