"""Query-understanding input policy and keyword making (no models needed)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidInputError
from services.common.text import MAX_QUERY_CHARS
from services.query_understanding.attributes import Attribute
from services.query_understanding.engine import MAX_RAW_CHARS, make_keywords, validate_query
from services.query_understanding.intent import Intent


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("   \t\n ", "empty"),
        ("\u200b\u200d", "empty"),  # format characters only
        ("a\x00b", "binary"),
        ("\x01\x02\x03\x04 caliper", "binary"),
        ("\ue000\ue001\ue002 x", "binary"),  # private use
        ("x" * (MAX_RAW_CHARS + 1), "characters"),
        ("word " * (MAX_QUERY_CHARS // 4), "after normalisation"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=why):
        validate_query(raw)


@pytest.mark.parametrize(
    "raw",
    ["digital caliper", "Ｄｉｇｉｔａｌ  CALIPER", "штангенциркуль digital", "数显 caliper 150mm"],
)
def test_good_and_mixed_script_queries_pass_through_normalised(raw: str) -> None:
    text = validate_query(raw)
    assert text and text == text.strip() and len(text) <= MAX_QUERY_CHARS
    assert validate_query(text) == text


def _intent(p: float, path: str = "Industrial & Scientific > Test > Lab Tubing") -> Intent:
    return Intent(path, p, 3)


def test_keywords_put_the_intended_category_first_then_attributes_once() -> None:
    attrs = [
        Attribute("brand", "acme", 0, 4),
        Attribute("category", "tubing", 5, 11),
        Attribute("size", "0.5 in", 12, 18),
        Attribute("brand", "acme", 19, 23),
    ]
    got = make_keywords("acme tubing 0.5 in acme", attrs, [_intent(0.9)], 0.5, 8)
    assert got == ["lab tubing", "acme", "0.5 in"]  # category attributes are not keywords


def test_an_unsure_intent_gives_no_category_keyword_and_the_limit_holds() -> None:
    attrs = [Attribute("material", f"m{i}", 0, 1) for i in range(10)]
    got = make_keywords("q", attrs, [_intent(0.3)], 0.5, 4)
    assert got == ["m0", "m1", "m2", "m3"]
    assert make_keywords("q", [], [], 0.5, 4) == []
