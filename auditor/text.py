"""Text that reaches a terminal or an HTML page: control and bidi characters refused or shown.

A prompt or a name is data, yet a NUL, an ANSI escape (ESC [ 2 J clears the screen; OSC 8
forges a link), a C1 control or a Unicode bidi override (U+202E writes the rest of the line
backwards) makes a terminal or a browser show something other than what was signed. Keyset
prompts refuse them outright (`unsafe_char`); text shown from a report or an error escapes
them visibly (`visible`), so what the reader sees is what the file holds.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: a prompt is one line), DEL, C1 controls, and the bidi
# embeddings/overrides (U+202A-U+202E) and isolates (U+2066-U+2069).
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def unsafe_char(text: str) -> str | None:
    """The first control or bidi character of `text` as U+XXXX and its offset, or None."""
    match = UNSAFE_CHARS.search(text)
    return None if match is None else f"U+{ord(match.group()):04X} at character {match.start()}"


def visible(text: str) -> str:
    """`text` with every control or bidi character written as \\uXXXX: shown, never obeyed."""
    return UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
