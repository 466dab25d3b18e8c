"""``services.common.text.normalize_query``: properties on any text and on real queries,
plus examples of units, sizes and model numbers."""

from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from models_export.dataset_files import wands_queries
from services.common.config import data_dir
from services.common.text import (
    MAX_NORMALIZED_CHARS,
    MAX_QUERY_CHARS,
    SIZE_RE,
    UNITS,
    normalize_query,
)

# Every code point except surrogates (which a Python str from the outside cannot hold).
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
# Text built from the pieces that exercise the rules: digits, joiners, unit words, marks,
# full-width forms, ligatures, fractions, quotes and typographic dashes.
# fmt: off
PIECES = st.sampled_from(
    [
        "0", "1", "2", "3", "4", "12", "0.5", "64", "1,000", ".", "-", "/", ",", "'", '"',
        "''", " ", "  ", "x", "X", "×", "in", "inch", "mm", "M", "l", "g", "v", "feet",
        "lbs", "pack", "sm", "G900F", "ab12m3x", "o-ring", "½", "¼", "⁄", "″", "′", "’",
        "\u0301", "\u0308", "e\u0301", "ﬁ", "ﬀ", "Ｓ", "１２", "ß", "İ", "ǰ", "ﾊﾟ", "\u200b",
        "\x00", "\t", "\n", "—", "−", "#", "%", "&", "_", "ΣΑΣ", "हिंदी", "日本", "٣",
    ]
)
# fmt: on
RULE_TEXT = st.lists(PIECES, max_size=40).map("".join)


WANDS = wands_queries(data_dir())


def _check_properties(text: str) -> str:
    out = normalize_query(text)
    assert normalize_query(out) == out, f"not idempotent: {text!r} -> {out!r}"
    assert len(out) <= MAX_NORMALIZED_CHARS
    assert out == out.strip() and "  " not in out
    assert out == unicodedata.normalize("NFKC", out)
    assert not any(unicodedata.category(c).startswith("C") for c in out)
    return out


@settings(max_examples=1500, deadline=None)
@given(ANY_TEXT)
@example("ǰ̣")  # casefold decomposes, NFKC recomposes differently
@example("1" * 2000)
@example("1/64 " * 400)
def test_any_text_is_normalised_idempotently_within_the_bound(text: str) -> None:
    _check_properties(text)


@settings(max_examples=1500, deadline=None)
@given(RULE_TEXT)
def test_rule_heavy_text_is_normalised_idempotently(text: str) -> None:
    _check_properties(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["1/2-inch", '3"', "1-1/4", "2x4", "sm-g900f", "a"]), max_size=400))
def test_long_inputs_are_cut_at_a_word_boundary(words: list[str]) -> None:
    text = " ".join(words)
    out = _check_properties(text)
    full = normalize_query(text[: 10 * MAX_QUERY_CHARS])
    if len(out) < len(full):
        assert full.startswith(out + " "), "the cut falls between words"


def test_every_real_wands_query_keeps_the_properties() -> None:
    assert len(WANDS) == 480
    changed = 0
    for query in WANDS:
        out = _check_properties(query)
        changed += out != " ".join(query.lower().split())
    assert changed > 0, "some WANDS queries hold sizes or punctuation"


def test_real_queries_with_sizes() -> None:
    by_text = {q: normalize_query(q) for q in WANDS}
    assert by_text["blk 18x18 seat cushions"] == "blk 18 x 18 seat cushions"
    assert by_text["3 1/2 inch drawer pull"] == "3.5 in drawer pull"
    assert by_text['fawkes 36" blue vanity'] == "fawkes 36 in blue vanity"
    assert by_text["bar stool 24 inches height"] == "bar stool 24 in height"


@pytest.mark.parametrize(
    "text",
    ["1/2 in", "1/2-inch", '1/2"', "0.5 inch", "0.5in", "½ inch", ".5 in", "0.50 Inches", "1/2''"],
)
def test_half_an_inch_written_every_way_is_one_string(text: str) -> None:
    assert normalize_query(text) == "0.5 in"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10mm", "10 mm"),
        ("10 millimeters", "10 mm"),
        ("2.5 cm", "2.5 cm"),
        ("3 meters", "3 m"),
        ("6 ft", "6 ft"),
        ("6 feet", "6 ft"),
        ("1 foot", "1 ft"),
        ("6'", "6 ft"),
        ("8 oz", "8 oz"),
        ("8 ounces", "8 oz"),
        ("8oz", "8 oz"),
        ("5 lbs", "5 lb"),
        ("5-pound", "5 lb"),
        ("5lb", "5 lb"),
        ("500ml", "500 ml"),
        ("2 liters", "2 l"),
        ("2 litre", "2 l"),
        ("5 gallon", "5 gal"),
        ("5gal", "5 gal"),
        ("100 grams", "100 g"),
        ("2 kg", "2 kg"),
        ("2kg", "2 kg"),
        ("60 PSI", "60 psi"),
        ("12 volts", "12 v"),
        ("12V", "12 v"),
        ("60 watt", "60 w"),
        ("60W", "60 w"),
        ("12x18", "12 x 18"),
        ("12 X 18", "12 x 18"),
        ("12×18", "12 x 18"),
        ('12"x18"', "12 in x 18 in"),
        ("2x4x8", "2 x 4 x 8"),
        ("4 1/2-Inch x 10yd", "4.5 in x 10 yd"),
        ("1-1/4-inch", "1.25 in"),
        ("1 1/4 inch", "1.25 in"),
        ("3/4", "0.75"),
        ("5/16 in", "0.3125 in"),
        ("1/64", "0.015625"),
        ("2.50", "2.5"),
        ("3.0 mm", "3 mm"),
        ("1,000 count", "1000 count"),
        ("5'11\"", "5 ft 11 in"),
        ("500-Pack", "500 pack"),
    ],
)
def test_units_and_numbers_are_canonical(text: str, expected: str) -> None:
    assert normalize_query(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SM-G900F", "sm-g900f"),
        ("Kreg SML-C125-500", "kreg sml-c125-500"),
        ("ab12m3x", "ab12m3x"),  # "m3" inside a code is no unit
        ("12v1", "12v1"),
        ("3M tape", "3m tape"),  # glued single-letter m/l/g are left alone
        ("316L", "316l"),
        ("T-50", "t-50"),
        ("541-774-21/2", "541-774-21/2"),  # not a fraction we convert: the code stays
        ("1/2-20", "1/2-20"),  # a thread spec, not half an inch
        ("3/2", "3/2"),
        ("24/7", "24/7"),
        ("v1.2", "v1.2"),
    ],
)
def test_model_numbers_stay_intact(text: str, expected: str) -> None:
    assert normalize_query(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Ｄｉｇｉｔａｌ\x00 Caliper\u200b\t ", "digital caliper"),
        ("ﬁne  ＳＴＥＥＬ", "fine steel"),
        ("Straße", "strasse"),
        ("o-ring", "o ring"),
        ("a/c unit", "a c unit"),
        ("men's boots", "mens boots"),
        ("Tapes, Adhesives & Sealants", "tapes adhesives sealants"),
        ("black & decker #8 (pack)", "black decker 8 pack"),
        ("snake_case", "snake case"),
        ("2 in 1", "2 in 1"),  # the canonical unit is also the preposition: unchanged
        ("हिंदी  शब्द", "हिंदी शब्द"),  # combining vowel signs stay inside the word
        ("", ""),
        (" \t\n", ""),
    ],
)
def test_text_rules(text: str, expected: str) -> None:
    assert normalize_query(text) == expected


def test_size_pattern_finds_canonical_sizes_only() -> None:
    text = normalize_query('bolt 1/2" x 3 in, 12x18 rug, 5 lbs, 12v1 and ab12m3x')
    assert [m.group() for m in SIZE_RE.finditer(text)] == ["0.5 in x 3 in", "12 x 18", "5 lb"]
    assert "in" in UNITS and "inch" not in UNITS


def test_a_short_query_takes_microseconds() -> None:
    queries = ["digital caliper", "Stainless Steel 1/2-inch Bolt", "blk 18x18 seat cushions"]
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        for q in queries:
            normalize_query(q)
    per_call = (time.perf_counter() - t0) / (n * len(queries))
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} us per query"  # ~10 us measured
