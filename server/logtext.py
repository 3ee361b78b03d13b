"""Client input in log lines, with control characters escaped: a %0A in a request path must not
start a forged line in the access log, nor an escape sequence repaint a terminal."""

from __future__ import annotations

_LIMIT = 2048  # a log line is no place for a 4 MB path


def printable(value: object) -> str:
    text = str(value)[:_LIMIT]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
