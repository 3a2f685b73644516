"""Untrusted text on a terminal: which characters must never reach it raw, and how to show them.

Its own small module (standard library only) because both the manifest validator and the
terminal layer use it, and the daemon, which validates manifests, should not load the terminal
layer's rich for it.
"""

from __future__ import annotations

import re

#: What must never reach a terminal raw: C0 controls but tab and newline, DEL, C1 controls (\x9b
#: is a one-byte CSI on some terminals) and the Unicode bidi and invisible-format controls that
#: reorder or hide text (a forged "signature ok" line, a file name that reads backwards).
#: Manifests refuse these outright (manifests.manifest.unsafe_char); other text is escaped.
UNSAFE_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def printable(text: object, multiline: bool = True) -> str:
    """``text`` safe for a terminal: control, C1 and bidi characters (from a peer, a tracker, a
    file) shown as escapes (``\\x1b``, ``\\u202e``), never sent raw, so a string cannot move the
    cursor, set the clipboard or reorder a line. Newlines and tabs stay unless ``multiline`` is off."""
    s = str(text)
    if not multiline:
        s = s.replace("\n", "\\n").replace("\t", "\\t")
    return UNSAFE_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)
