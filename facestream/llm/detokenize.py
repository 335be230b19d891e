"""Tokens to text, incrementally, with stop strings: one :class:`TextTail` per request.

Works with any tokenizer that has ``decode(ids, skip_special_tokens=True) -> str`` (a
transformers tokenizer, or :class:`facestream.llm.llamacpp.GgufTokenizer`).  No torch.
"""

from __future__ import annotations

_REPLACEMENT = "\ufffd"     # what a tokenizer emits for an incomplete UTF-8 sequence


class TextTail:
    """Text of one request's generated tokens, built incrementally, with stop strings.

    ``push`` decodes only the tokens since the last complete character (plus one token of
    context, so word-boundary spaces come out as in a full decode).  Special tokens are left
    out of the text.  Not thread-safe; one per request."""

    def __init__(self, tokenizer, stop: tuple[str, ...], *, include_stop: bool = False) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._include_stop = include_stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._ids: list[int] = []
        self._context = 0       # ids[context:read] were decoded already, as context
        self._read = 0          # ids[read:] are not in the text yet
        self.text = ""

    def push(self, token: int) -> bool:
        """Add one token; True when the text now contains a stop string, in which case
        ``text`` has been cut just before the first one (just after it with
        ``include_stop``)."""
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._context:self._read], skip_special_tokens=True)
        after = decode(self._ids[self._context:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return False        # nothing printable yet (special token or partial character)
        searched_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += after[len(before):]
        self._context, self._read = self._read, len(self._ids)
        if not self._stop:
            return False
        hits = [(at, -len(s)) for s in self._stop if (at := self.text.find(s, searched_from)) >= 0]
        if not hits:
            return False
        at, minus_length = min(hits)      # the earliest; the longest of those starting there
        self.text = self.text[:at - minus_length if self._include_stop else at]
        return True
