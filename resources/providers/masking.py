"""Secrets out of every text the HTTP layer lets go: errors, log lines, metadata.

A secret is masked in every form a provider may send it back in: raw, percent-encoded (either
hex case, `+` for space, encoded twice), JSON-escaped (`\\uXXXX`, `\\/`) and base64 (standard
or URL-safe, at any alignment, so also inside `base64(key:secret)` as Basic auth sends it).
Then any 6-character piece of a secret left over (a body some code cut mid-key) is masked too.
Always mask first, then shorten (`excerpt`): a cut made first leaves a key's prefix readable.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

MASK = "***"
PIECE = 6  # no run of this many characters of a secret survives


def _char_pattern(char: str) -> str:
    """One character of a secret as itself or any escape of it a server may echo."""
    code = ord(char)
    hexed = f"{code:02x}" if code < 0x80 else None
    options = [re.escape(char), f"\\\\u{code:04x}"]
    if hexed is not None:
        either = f"(?:{hexed}|{hexed.upper()})"
        options += [f"%{either}", f"%25{either}"]
    if char == "/":
        options.append(r"\\/")
    if char == " ":
        options.append(r"\+")
    return "(?:" + "|".join(options) + ")"


def base64_cores(secret: str) -> set[str]:
    """The base64 text a secret becomes inside any longer base64 stream: one core per alignment
    and alphabet, without the edge characters its neighbours would change."""
    raw, cores = secret.encode(), set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        first, end = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        core = encoded[first:end]
        if len(core) >= 4:
            cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


class Redactor:
    """Masks the secrets it knows (see the module docstring); `add` one learnt later."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self.secrets: list[str] = []
        self._pattern: re.Pattern | None = None
        self._pieces: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if not secret or secret in self.secrets:
            return
        self.secrets.append(secret)
        forms = []
        for known in sorted(self.secrets, key=len, reverse=True):  # longest first
            forms.append("".join(_char_pattern(c) for c in known))
            forms += map(re.escape, sorted(base64_cores(known), key=len, reverse=True))
            if len(known) > PIECE:
                self._pieces |= {known[i : i + PIECE] for i in range(len(known) - PIECE + 1)}
        self._pattern = re.compile("|".join(forms))

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub(MASK, text)
        if not self._pieces:
            return text
        keep, i, n = [], 0, len(text)
        while i < n:
            if text[i : i + PIECE] in self._pieces:
                end = i + PIECE
                while end < n and text[end - PIECE + 1 : end + 1] in self._pieces:
                    end += 1
                keep.append(MASK)
                i = end
            else:
                keep.append(text[i])
                i += 1
        return "".join(keep)

    def excerpt(self, text: str, limit: int = 300) -> str:
        """At most about `limit` characters of `text`, masked before it is cut (a long text
        is masked in two windows wider than what is kept, not whole)."""
        window = 2 * limit + 512
        if len(text) <= 2 * window:
            return shorten(self(text), limit)
        head, tail = self(text[:window]), self(text[-window:])
        keep = limit // 4
        return f"{head[: limit - keep]} ... {tail[-keep:]}"


def shorten(text: str, limit: int) -> str:
    """The head and the tail of a long text (the tail often says what to do)."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[: limit - tail]} ... {text[-tail:]}"
