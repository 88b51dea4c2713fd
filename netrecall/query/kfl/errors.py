"""KflError: a filter the user typed is wrong; the message points at the offending character."""

from __future__ import annotations

from netrecall.errors import NetrecallError


class KflError(NetrecallError):
    """A KFL syntax or type error at `position` (0-based offset into the filter text).

    The message is the reason followed by the filter and a caret line under the offending character,
    so a terminal shows exactly where to look; `reason` is the bare sentence for APIs.
    """

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.text = text
        self.position = max(0, min(position, len(text)))
        super().__init__(f"{reason} at position {self.position}", excerpt=caret_lines(text, self.position))


def caret_lines(text: str, position: int) -> str:
    """The line of `text` holding `position`, and a caret under that character."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : end if end >= 0 else len(text)]
    column = position - start
    # Keep the caret under the right character when the line has tabs.
    pad = "".join("\t" if ch == "\t" else " " for ch in line[:column])
    return f"  {line}\n  {pad}^"
