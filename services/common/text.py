"""Query text normalisation: the one home, shared by the gateway, retrieval and query understanding.

:func:`normalize_query` turns what a person typed into the form every index and lexicon is
keyed on:

* Unicode NFKC, control/format characters out, case folded (``casefold``);
* punctuation becomes a space, except a joiner (``-``, ``.``, ``/``) inside a token that
  holds digits: ``SM-G900F`` -> ``sm-g900f``, ``3.5``, ``t-50`` stay whole, while
  ``o-ring`` -> ``o ring`` and ``a/c`` -> ``a c``; an apostrophe between letters is dropped
  (``men's`` -> ``mens``); thousands separators go (``1,000`` -> ``1000``);
* quantities are canonical: fractions with a power-of-two denominator become decimals
  (``1/2`` -> ``0.5``, ``1-1/4`` and ``1 1/4`` -> ``1.25``), trailing zeros go
  (``2.50`` -> ``2.5``), and a number followed by a unit is written ``<number> <unit>``
  with the unit's short name (:data:`UNIT_ALIASES`): ``1/2 in``, ``1/2-inch``, ``1/2"``,
  ``0.5 inch`` and ``0.5in`` are all ``0.5 in``; dimensions are ``12 x 18``;
* whitespace collapsed and trimmed; at most :data:`MAX_NORMALIZED_CHARS` characters, cut
  at a word boundary.

A unit is only recognised as a whole token or as the whole rest of a token that starts
with a number, so model codes such as ``ab12m3x`` or ``12v1`` stay intact. The single
letters ``m``, ``l`` and ``g`` glued to a number (``3m``, ``316l``, ``5g``) are left alone:
they are as often a brand, a steel grade or a product generation as a unit; written apart
(``3 m``) or spelled out (``3 meters``) they are units.

The function is idempotent and total (never raises on any ``str``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

MAX_QUERY_CHARS = 256
#: bound on :func:`normalize_query`'s output (unit canonicalisation can lengthen a text)
MAX_NORMALIZED_CHARS = 4 * MAX_QUERY_CHARS

#: canonical unit -> the ways of writing it (each alias also maps to itself)
UNIT_ALIASES: dict[str, tuple[str, ...]] = {
    "in": ("in", "inch", "inches"),
    "ft": ("ft", "feet", "foot"),
    "yd": ("yd", "yds", "yard", "yards"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "m": ("m", "meter", "meters", "metre", "metres"),
    "oz": ("oz", "ounce", "ounces"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "l": ("l", "liter", "liters", "litre", "litres"),
    "gal": ("gal", "gallon", "gallons"),
    "qt": ("qt", "quart", "quarts"),
    "g": ("g", "gm", "gram", "grams"),
    "kg": ("kg", "kgs", "kilogram", "kilograms"),
    "psi": ("psi",),
    "v": ("v", "volt", "volts"),
    "w": ("w", "watt", "watts"),
}
UNITS: frozenset[str] = frozenset(UNIT_ALIASES)
_CANONICAL_UNIT: dict[str, str] = {a: u for u, aliases in UNIT_ALIASES.items() for a in aliases}
#: single-letter units that are not split off a number they are glued to
_NOT_GLUED = frozenset({"m", "l", "g"})
_UNIT_ALT = "|".join(sorted(_CANONICAL_UNIT, key=lambda a: (-len(a), a)))

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_UNIT = "(?:" + "|".join(sorted(UNITS, key=lambda u: (-len(u), u))) + ")"
#: a canonical size in normalised text: ``0.5 in``, ``12 x 18``, ``12 in x 18 in``
SIZE_RE = re.compile(
    rf"(?<!\S){_NUM}(?: {_UNIT})?(?: x {_NUM}(?: {_UNIT})?)+(?!\S)|(?<!\S){_NUM} {_UNIT}(?!\S)"
)


def _mark_ranges() -> str:
    """A regex class body of every combining mark (category M), found once at import."""
    spans: list[tuple[int, int]] = []
    code_points = [*range(0x300, 0x20000), *range(0xE0000, 0xE1000)]  # no marks elsewhere
    for cp in code_points:
        if unicodedata.category(chr(cp))[0] == "M":
            if spans and spans[-1][1] == cp - 1:
                spans[-1] = (spans[-1][0], cp)
            else:
                spans.append((cp, cp))
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)


# a word character: a letter, a digit or a combining mark (not the underscore)
_WORD_CHAR = rf"(?:[^\W_]|[{_mark_ranges()}])"
_COMPOUND_UNICODE = re.compile(rf"{_WORD_CHAR}+(?:[-./]{_WORD_CHAR}+)*")
_COMPOUND_ASCII = re.compile(r"[a-z0-9]+(?:[-./][a-z0-9]+)*")
_PLAIN = re.compile(r"[a-z]+(?: [a-z]+)*")
_LOWER_SPACED = re.compile(r"[a-z ]*")
_DIGIT = re.compile(r"[0-9]")
_ANY_DIGIT = re.compile(r"\d")
_JOINER_SPLIT = re.compile(r"([-./])")
_JOINERS = re.compile(r"[-./]")

# character-level rewrites, applied in this order when the text holds an ASCII digit
_THOUSANDS = re.compile(r"(?<![0-9,.])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9,])")
_LEADING_DOT = re.compile(r"(?<![\w.])\.(?=[0-9])")
_INCH_MARK = re.compile(r"(?<=[0-9])(?:\"|'')")
_FOOT_MARK = re.compile(r"(?<=[0-9])'(?![^\W\d_])")
_SPACED_MIXED = re.compile(r"(?<![\w./-])([0-9]+)\s+([0-9]+)/([0-9]+)(?![\w/]|[.-][0-9])")
_NUM_UNIT = rf"[0-9]+(?:[./-][0-9]+)*(?:[\s-]?(?:{_UNIT_ALT})(?![^\W\d_x]))?"
_DIMENSION = re.compile(rf"(?<![\w./-]){_NUM_UNIT}(?:\s*x\s*{_NUM_UNIT})+")
_TIMES = re.compile(r"\s*x\s*")
_LETTER_APOSTROPHE = re.compile(r"(?<=[^\W\d_])'(?=[^\W\d_])")

# quantities inside one compound token
_MIXED = re.compile(r"([0-9]+)-([0-9]+)/([0-9]+)")
_FRACTION = re.compile(r"([0-9]+)/([0-9]+)")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNIT_AFTER = re.compile(rf"(-?)({_UNIT_ALT})(?=$|-)")
_ALPHA_TAIL = re.compile(r"(?:-[^\W\d_]+)+")
_NUMBER_TOKEN = re.compile(_NUM)

_FRACTION_DENOMINATORS = frozenset({2, 4, 8, 16, 32, 64})
_DECIMAL_PLACES = 6  # enough for n/64 exactly

# typographic variants of the characters the rules above look at (after NFKC)
_TYPOGRAPHY = str.maketrans(
    {
        "\u00d7": " x ",  # multiplication sign
        "\u2044": "/",  # fraction slash (NFKC writes ½ as 1⁄2)
        "\u2215": "/",  # division slash
        "\u2032": "'",  # prime (NFKC writes a double prime as two primes)
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        **{c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"},
    }
)


def strip_control(text: str) -> str:
    """Drop control/format characters (Unicode categories Cc, Cf, Cs, Co, Cn); keep whitespace."""
    if text.isprintable():  # no category C (nor Z other than ' ') character: nothing to drop
        return text
    return "".join(
        ch for ch in text if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )


#: control (not whitespace), private-use and unassigned code points: what binary data
#: decoded as text is made of; format characters (zero-width joiners...) are ordinary text
_BINARY_CATEGORIES = frozenset({"Cc", "Co", "Cn"})
MAX_BINARY_SHARE = 0.1


def looks_binary(text: str) -> bool:
    """Whether ``text`` is binary data rather than a query: a NUL, or more than
    :data:`MAX_BINARY_SHARE` of its characters are control, private-use or unassigned."""
    if text.isprintable():
        return False
    if "\x00" in text:
        return True
    bad = sum(
        1 for ch in text if not ch.isspace() and unicodedata.category(ch) in _BINARY_CATEGORIES
    )
    return bad > MAX_BINARY_SHARE * len(text)


def _fold(text: str) -> str:
    """NFKC + control characters out + case folding, repeated until stable."""
    if text.isascii():
        return strip_control(text).lower()
    text = strip_control(unicodedata.normalize("NFKC", text))
    for _ in range(4):  # casefold can produce text that NFKC changes again (rarely)
        folded = unicodedata.normalize("NFKC", text.casefold())
        if folded == text:
            break
        text = folded
    return text.translate(_TYPOGRAPHY)


def _fraction_value(whole: int, num: int, den: int) -> str | None:
    """``whole + num/den`` as a decimal string, or None unless a proper power-of-2 fraction."""
    if den not in _FRACTION_DENOMINATORS or not 0 < num < den:
        return None
    scaled = (whole * den + num) * 10**_DECIMAL_PLACES // den
    units, frac = divmod(scaled, 10**_DECIMAL_PLACES)
    return f"{units}.{frac:0{_DECIMAL_PLACES}d}".rstrip("0").rstrip(".")


def _decimal(text: str) -> str:
    """``text`` (digits, maybe one dot) without trailing fractional zeros."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def _spaced_mixed(m: re.Match[str]) -> str:
    """``3 1/2`` -> ``3-1/2`` (later ``3.5``) when the fraction is one we convert."""
    if _fraction_value(int(m[1]), int(m[2]), int(m[3])) is None:
        return m[0]
    return f"{m[1]}-{m[2]}/{m[3]}"


def _dimension(m: re.Match[str]) -> str:
    return _TIMES.sub(" x ", m[0])


def _quantity(token: str, pos: int) -> tuple[str, int] | None:
    """The quantity at ``pos`` of a compound token: (canonical number, end) or None."""
    for pattern in (_MIXED, _FRACTION):
        m = pattern.match(token, pos)
        if m is not None:
            groups = [int(g) for g in m.groups()]
            value = _fraction_value(*([0, *groups] if len(groups) == 2 else groups))
            if value is not None:
                return value, m.end()
    m = _DECIMAL.match(token, pos)
    return (_decimal(m[0]), m.end()) if m is not None else None


def _measure(token: str) -> list[str] | None:
    """Words of a compound that is a quantity (+ unit) (+ ``-word`` tail); None otherwise."""
    q = _quantity(token, 0)
    if q is None:
        return None
    value, pos = q
    out = [value]
    u = _UNIT_AFTER.match(token, pos)
    if u is not None and (u[1] or u[2] not in _NOT_GLUED):
        out.append(_CANONICAL_UNIT[u[2]])
        pos = u.end()
    if pos == len(token):
        return out
    if _ALPHA_TAIL.fullmatch(token, pos):
        out.extend(token[pos + 1 :].split("-"))
        return out
    return None


def _pieces(token: str) -> list[str]:
    """A compound token (word characters joined by ``-./``) cut where its joiners do not join.

    A hyphen joins when a side holds a digit; a dot or slash only joins two such sides."""
    if not _ANY_DIGIT.search(token):
        return _JOINERS.sub(" ", token).split()
    parts = _JOINER_SPLIT.split(token)
    if len(parts) == 1:
        return parts
    pieces = [parts[0]]
    has_digit = [_ANY_DIGIT.search(p) is not None for p in parts[::2]]
    for k in range(1, len(parts), 2):
        joiner, part = parts[k], parts[k + 1]
        left, right = has_digit[k // 2], has_digit[k // 2 + 1]
        if (left or right) if joiner == "-" else (left and right):
            pieces[-1] += joiner + part
        else:
            pieces.append(part)
    return pieces


def _canonical_units(words: list[str]) -> list[str]:
    """A unit word right after a number becomes the unit's canonical name."""
    for i in range(1, len(words)):
        unit = _CANONICAL_UNIT.get(words[i])
        if unit is not None and _NUMBER_TOKEN.fullmatch(words[i - 1]):
            words[i] = unit
    return words


def _normalize(text: str) -> str:
    text = _fold(text)
    digits = _DIGIT.search(text) is not None
    if digits:  # rules that read punctuation: before punctuation becomes a space
        if "," in text:
            text = _THOUSANDS.sub(lambda m: m[0].replace(",", ""), text)
        if "." in text:
            text = _LEADING_DOT.sub("0.", text)
        if '"' in text or "'" in text:
            text = _FOOT_MARK.sub(" ft ", _INCH_MARK.sub(" in ", text))
    if "'" in text:
        text = _LETTER_APOSTROPHE.sub("", text)
    compounds = (_COMPOUND_ASCII if text.isascii() else _COMPOUND_UNICODE).findall(text)
    pieces: list[str] = []
    for token in compounds:
        if token.isalpha():
            pieces.append(token)
        else:
            pieces.extend(_pieces(token))
    if not digits:
        return " ".join(pieces)
    # rules across words, on the pieces one space apart: ``3 1/2`` and ``12x18``
    text = " ".join(pieces)
    if "/" in text:
        text = _SPACED_MIXED.sub(_spaced_mixed, text)
    if "x" in text:
        text = _DIMENSION.sub(_dimension, text)
    words: list[str] = []
    for piece in text.split(" "):
        measured = _measure(piece) if _DIGIT.match(piece) else None
        if measured is None:
            words.append(piece)
        else:
            words.extend(measured)
    return " ".join(_canonical_units(words))


def _bounded(text: str, normalize: Callable[[str], str]) -> str:
    """``text`` cut to :data:`MAX_NORMALIZED_CHARS`, at a word boundary where there is one."""
    for _ in range(8):
        if len(text) <= MAX_NORMALIZED_CHARS:
            return text
        head = text[: MAX_NORMALIZED_CHARS + 1]
        space = head.rfind(" ")
        # a cut inside a word may leave a joiner or half a number: normalise the piece again
        text = head[:space] if space > 0 else normalize(head[:MAX_NORMALIZED_CHARS])
    return text[:MAX_NORMALIZED_CHARS].rpartition(" ")[0]


def normalize_query(text: str) -> str:
    """The canonical form of a query (see the module docstring); idempotent, never raises."""
    if len(text) <= MAX_NORMALIZED_CHARS and text.isascii():
        if _PLAIN.fullmatch(text):  # fast path: lower-case words and single spaces
            return text
        lowered = text.lower()
        if _LOWER_SPACED.fullmatch(lowered):  # letters and spaces only
            return " ".join(lowered.split())
    out = _normalize(text)
    if len(out) > MAX_NORMALIZED_CHARS:
        out = _bounded(out, _normalize)
    return out
