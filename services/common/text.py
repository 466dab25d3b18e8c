"""Query text normalisation shared by the gateway and query understanding."""

from __future__ import annotations

import re
import unicodedata

MAX_QUERY_CHARS = 256
_WHITESPACE = re.compile(r"\s+")


def strip_control(text: str) -> str:
    """Drop control/format characters (Unicode categories Cc, Cf, Cs, Co, Cn); keep whitespace."""
    if text.isprintable():  # no category C (nor Z other than ' ') character: nothing to drop
        return text
    return "".join(
        ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )


def normalize_query(text: str) -> str:
    """NFKC, control characters out, lower-cased, whitespace collapsed and trimmed."""
    text = unicodedata.normalize("NFKC", text)
    text = strip_control(text)
    return _WHITESPACE.sub(" ", text).strip().lower()
