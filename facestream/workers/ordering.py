"""The chunk order policy: what a worker does with a stream's chunks that come out of order.

Kafka keeps a stream's messages in order when one publisher sends them, so disorder means a
buggy or duplicated publisher.  The rule: chunk numbers and media times of a stream go up.

* the next chunk number: analysed;
* a number past the next (chunks missing): ``gap`` — analysed, and the missing chunks are
  reported (an error event), since nothing will bring them back;
* chunk 0 again (without an end marker): ``restart`` — the publisher restarted; the stream's
  tracks end and it starts afresh;
* a number already passed: ``late`` (a gap had skipped it) or ``duplicate`` (it was analysed)
  — refused;
* a chunk that starts earlier in media time than the previous one: ``backwards``, or later by
  more than :data:`MAX_TIME_JUMP_S` plus the wall time between their messages: ``jump`` —
  refused.

There is no reorder buffer: holding chunks back would add latency to every live stream for
the sake of a publisher bug.  Pure and cheap; one :class:`ChunkOrder` per stream, pickled
with the stream's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A chunk may start later than its predecessor by this much more than the wall clock moved
# between their messages; further is a timestamp no camera or file gives.
MAX_TIME_JUMP_S = 3600.0
_SKIPPED_KEPT = 1024          # chunk numbers a gap skipped, remembered to tell late from repeat


@dataclass(frozen=True)
class Verdict:
    kind: str | None          # None: in order; else gap, restart, late, duplicate, backwards, jump
    accept: bool              # analyse the chunk
    message: str | None = None    # for the error event (gap) or the dead letter (refused)


@dataclass
class ChunkOrder:
    """Where a stream is in its chunk sequence.  Not thread-safe."""

    next_seq: int | None = None          # the chunk number expected next (None: any)
    skipped: set = field(default_factory=set)
    last_start_s: float | None = None    # media start of the last chunk taken
    last_stamp_s: float = 0.0            # its message's broker timestamp, seconds

    def judge(self, seq: int, start_s: float, stamp_s: float) -> Verdict:
        """The verdict on chunk ``seq`` starting at media second ``start_s``, whose message
        the broker stamped at ``stamp_s`` (epoch seconds; 0 if unknown).  An accepted chunk
        becomes the stream's last one."""
        expected, last = self.next_seq, self.last_start_s
        verdict = Verdict(None, True)
        if expected is not None and seq == 0 and expected > 0:
            verdict = Verdict("restart", True)
            self.skipped, last = set(), None
        elif expected is not None and seq < expected:
            late = seq in self.skipped
            return Verdict("late" if late else "duplicate", False,
                           f"chunk {seq} arrived after chunk {expected - 1} "
                           f"({'out of order' if late else 'a repeat'}); not analysed")
        elif last is not None and start_s < last:
            return Verdict("backwards", False,
                           f"chunk {seq} starts at {start_s:.3f} s, before the previous "
                           f"chunk's {last:.3f} s; not analysed")
        elif last is not None and start_s - last > (
                MAX_TIME_JUMP_S + max(0.0, stamp_s - self.last_stamp_s)):
            return Verdict("jump", False,
                           f"chunk {seq} starts at {start_s:.6g} s, {start_s - last:.6g} s "
                           "after the previous chunk: timestamps out of bounds; not analysed")
        elif expected is not None and seq > expected:
            missing = (f"chunk {expected}" if seq == expected + 1
                       else f"chunks {expected}..{seq - 1}")
            self.skipped.update(range(max(expected, seq - _SKIPPED_KEPT), seq))
            verdict = Verdict("gap", True,
                              f"{missing} never arrived: the video from {last or 0:.2f} s to "
                              f"{start_s:.2f} s is analysed only in part")
        self.next_seq = seq + 1
        self.skipped = {s for s in self.skipped if s >= seq - _SKIPPED_KEPT}
        self.last_start_s, self.last_stamp_s = start_s, stamp_s
        return verdict
