"""Text that can be stored and sent anywhere: no lone UTF-16 surrogates.

A Python ``str`` may hold a lone surrogate (U+D800 to U+DFFF), e.g. when a provider splits an emoji
between two JSON chunks and ``json.loads('"\\ud83d"')`` decodes half of it. Such a string cannot be
encoded as UTF-8, so SQLite, Postgres, JSON-over-HTTP and the SSE stream would all fail on it. Every
text that enters a run (the caller's input and history, model deltas, tool results, cancel reasons,
error messages) passes through here once, so the stream, the output and the stored row carry the
same text: a surrogate pair split across two deltas is joined again, and a surrogate that stays
alone becomes U+FFFD (the replacement character), as a UTF-8 decoder with ``errors="replace"`` does.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def scrub(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (pairs kept as the character they encode)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 round trip: a high+low pair decodes to its character, a lone half to U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def is_high_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udbff"


class DeltaScrubber:
    """Scrubs the text deltas of one stream, joining a surrogate pair split between two deltas.

    ``feed`` returns the text to deliver now (possibly ``""``); a trailing high surrogate is held back
    until the next delta shows whether its low half follows. ``flush`` returns what is held back at
    the end of the stream (U+FFFD, or ``""``).
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = ""

    def feed(self, text: str) -> str:
        if self.held:
            text, self.held = self.held + text, ""
        elif text.isascii():
            return text
        if text and is_high_surrogate(text[-1]):
            text, self.held = text[:-1], text[-1]
        return scrub(text)

    def flush(self) -> str:
        held, self.held = self.held, ""
        return REPLACEMENT if held else ""
