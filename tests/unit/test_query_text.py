"""Query understanding's text parts: lexicon mining, spelling correction, attribute matching."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.common.config import data_dir
from services.common.errors import ArtifactIntegrityError
from services.common.text import normalize_query
from services.query_understanding.attributes import Attribute, AttributeMatcher, singular
from services.query_understanding.lexicon import (
    LEXICON_DIR,
    LEXICON_FILE,
    Lexicon,
    mine_lexicon,
)
from services.query_understanding.spelling import SpellCorrector, SpellingConfig
from tests.synthetic_catalog import WORDS, make_items

# A tiny hand-made catalog: (title, brand, category path, description).
CATALOG = [
    (
        "Acme Stainless Steel Hex Bolt, 1/2-Inch x 3 in (10-Pack)",
        "Acme",
        "Industrial & Scientific,Fasteners,Bolts",
        "Durable bolt. Resists corosion.",
    ),
    ('Acme Brass Hex Nut 1/2"', "Acme", "Industrial & Scientific,Fasteners,Nuts", "Durable."),
    (
        "Borg Digital Caliper 6 Inch, Stainless Steel",
        "Borg",
        "Industrial & Scientific,Measuring Tools,Calipers",
        "A durable caliper for every bench.",
    ),
    (
        "Borg Caliper Replacement Battery 3V",
        "Borg",
        "Industrial & Scientific,Measuring Tools,Batteries",
        "",
    ),
    (
        "Zylo Nylon Cable Ties 8 in, 100 Pack",
        "Zylo",
        "Industrial & Scientific,Cable Ties",
        "Bench tested.",
    ),
    ("Zylo Silicone Rubber Sheet 12x18", "Zylo", "Industrial & Scientific,Rubber Sheets", ""),
    ("Quellmark SM-G900F Adapter", "Quellmark Tools", "Industrial & Scientific,Adapters", ""),
]


def _mine(**kwargs: int) -> Lexicon:
    return mine_lexicon(
        [t for t, _, _, _ in CATALOG],
        [b for _, b, _, _ in CATALOG],
        [c.split(",") for _, _, c, _ in CATALOG],
        [d for _, _, _, d in CATALOG],
        **kwargs,
    )


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return _mine()


# ---------------------------------------------------------------- lexicon


def test_lexicon_vocabularies_come_from_the_catalog(lexicon: Lexicon) -> None:
    assert lexicon.brands == ["acme", "borg", "quellmark tools", "zylo"]
    assert lexicon.materials == [
        "brass", "nylon", "rubber", "silicone", "stainless steel", "steel",
    ]  # fmt: skip
    assert lexicon.sizes == ["0.5 in", "0.5 in x 3 in", "12 x 18", "3 v", "6 in", "8 in"]
    for term in ("calipers", "measuring tools", "measuring", "tools", "cable ties", "fasteners"):
        assert term in lexicon.category_terms
    assert "&" not in lexicon.category_terms and "and" not in lexicon.category_terms
    # counts: every title/brand/category word; description words from 3 occurrences
    assert lexicon.word_counts["caliper"] == 3  # two titles, one description
    assert lexicon.word_counts["acme"] == 4  # two titles, two brands
    assert lexicon.word_counts["durable"] == 3
    assert "corosion" not in lexicon.word_counts and "bench" not in lexicon.word_counts
    assert "sm" in lexicon.word_counts and "g900f" not in lexicon.word_counts
    assert "wood" not in lexicon.materials


def test_description_threshold_is_configurable() -> None:
    loose = _mine(description_min_count=1)
    assert loose.word_counts["corosion"] == 1 and loose.word_counts["bench"] == 2


def test_mining_works_on_the_shared_synthetic_catalog() -> None:
    items = list(make_items(60).values())
    lex = mine_lexicon(
        [i["title"] for i in items],
        [i["brand"] for i in items],
        [i["categories"].split(",") for i in items],
        [i["description"] for i in items],
    )
    assert lex.brands == [f"brand{i}" for i in range(5)]
    assert set(WORDS) <= set(lex.word_counts)
    assert {"root", "group 0", "kind 5", "group", "kind"} <= set(lex.category_terms)
    assert lex.materials == ["brass", "steel"] and lex.sizes == []


def test_lexicon_save_load_round_trip(lexicon: Lexicon, tmp_path: Path) -> None:
    written = lexicon.save(tmp_path / LEXICON_DIR)
    assert written == [tmp_path / LEXICON_FILE]
    loaded = Lexicon.load(lambda rel: tmp_path / rel)
    assert loaded == lexicon


def test_a_damaged_lexicon_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / LEXICON_FILE
    path.parent.mkdir()
    path.write_text('{"format": 1, "word_counts": {}}')
    with pytest.raises(ArtifactIntegrityError, match="lexicon"):
        Lexicon.load(lambda rel: tmp_path / rel)
    path.write_text("{not json")
    with pytest.raises(ArtifactIntegrityError):
        Lexicon.load(lambda rel: tmp_path / rel)


# ---------------------------------------------------------------- spelling


def _lexicon(words: dict[str, int], brands: list[str] | None = None) -> Lexicon:
    return Lexicon(
        word_counts=words, brands=brands or [], category_terms=[], materials=[], sizes=[]
    )


NO_ENGLISH: frozenset[str] = frozenset()


def test_a_typo_of_a_catalog_word_is_fixed(lexicon: Lexicon) -> None:
    fix = SpellCorrector(lexicon).correct(normalize_query("Borg digitl calipr 6 inch"))
    assert fix.text == "borg digital caliper 6 in"
    assert fix.changes == [("digitl", "digital"), ("calipr", "caliper")]


def test_clean_queries_come_back_unchanged(lexicon: Lexicon) -> None:
    speller = SpellCorrector(lexicon)
    for title, _, _, _ in CATALOG:
        norm = normalize_query(title)
        assert speller.correct(norm).text == norm
        assert speller.correct(norm).changes == []


def test_brand_words_are_left_alone() -> None:
    lex = _lexicon({"hammer": 10})
    assert SpellCorrector(lex, known_words=NO_ENGLISH).correct("hammel").text == "hammer"
    branded = _lexicon({"hammer": 10}, brands=["hammel tools"])
    assert SpellCorrector(branded, known_words=NO_ENGLISH).correct("hammel").changes == []


def test_codes_short_words_and_vocabulary_words_are_left_alone() -> None:
    speller = SpellCorrector(
        _lexicon({"tape": 50, "hammer": 50, "hammers": 2, "g900f": 5}), known_words=NO_ENGLISH
    )
    for text in ("sm-g900f", "g900e", "hammer2", "tap", "hammers", "0.5 in"):
        assert speller.correct(text).changes == [], text
    assert speller.correct("tapw").text == "tape"


def test_non_latin_words_are_left_alone() -> None:
    speller = SpellCorrector(_lexicon({"кабель": 10, "cable": 10}), known_words=NO_ENGLISH)
    assert speller.correct("кабелр").changes == []
    assert speller.correct("cablr").text == "cable"


def test_general_english_words_outside_the_catalog_are_left_alone() -> None:
    lex = _lexicon({"soda": 50})
    assert SpellCorrector(lex).correct("sofa").changes == []
    assert SpellCorrector(lex, known_words=NO_ENGLISH).correct("sofa").text == "soda"


def test_no_fix_without_a_clearly_better_suggestion() -> None:
    even = SpellCorrector(_lexicon({"bolt": 10, "belt": 10}), known_words=NO_ENGLISH)
    assert even.correct("bilt").changes == [], "two suggestions equally likely"
    clear = SpellCorrector(_lexicon({"bolt": 40, "belt": 10}), known_words=NO_ENGLISH)
    assert clear.correct("bilt").text == "bolt"


def test_distance_two_only_for_longer_words() -> None:
    speller = SpellCorrector(_lexicon({"adhesive": 20, "stainless": 20}), known_words=NO_ENGLISH)
    assert speller.correct("adhesve").text == "adhesive"  # 7 letters, distance 1
    assert speller.correct("adhsve").changes == []  # 6 letters, distance 2
    assert speller.correct("stanles").text == "stainless"  # 7 letters, distance 2
    strict = SpellCorrector(
        _lexicon({"stainless": 20}), SpellingConfig(min_len_distance2=8), known_words=NO_ENGLISH
    )
    assert strict.correct("stanles").changes == []


def test_correction_is_deterministic(lexicon: Lexicon) -> None:
    queries = ["stainles steal bolt", "nylon cabel ties", "silicon rubbr sheet", "hex nutt"]
    first = [SpellCorrector(lexicon).correct(q) for q in queries]
    again = SpellCorrector(lexicon)
    assert [again.correct(q) for q in queries] == first
    assert [again.correct(q) for q in queries] == first  # cached answers are the same


# ---------------------------------------------------------------- attributes


def test_attributes_are_found_with_their_spans(lexicon: Lexicon) -> None:
    text = normalize_query("Acme stainless steel hex bolt 1/2 inch")
    assert text == "acme stainless steel hex bolt 0.5 in"
    assert AttributeMatcher(lexicon).match(text) == [
        Attribute("brand", "acme", 0, 4),
        Attribute("material", "stainless steel", 5, 20),
        Attribute("category", "bolts", 25, 29),  # the singular of a category name
        Attribute("size", "0.5 in", 30, 36),
    ]


def test_matches_are_whole_words_only(lexicon: Lexicon) -> None:
    matcher = AttributeMatcher(lexicon)
    assert matcher.match("acmex brassy steelworks zylon") == []
    assert [a.value for a in matcher.match("zylo brass")] == ["zylo", "brass"]


def test_the_longest_match_wins(lexicon: Lexicon) -> None:
    matcher = AttributeMatcher(lexicon)
    found = matcher.match("quellmark tools measuring tools")
    assert [(a.name, a.value, a.start, a.end) for a in found] == [
        ("brand", "quellmark tools", 0, 15),
        ("category", "measuring tools", 16, 31),
    ]
    assert [a.value for a in matcher.match("steel 12 x 18 in")] == ["steel", "12 x 18 in"]


def test_sizes_outside_the_catalog_are_sizes_too(lexicon: Lexicon) -> None:
    empty = AttributeMatcher(_lexicon({}))
    assert empty.match("7 mm drill") == [Attribute("size", "7 mm", 0, 4)]
    assert empty.match("drill bits") == []
    assert AttributeMatcher(lexicon).match("ab12m3x") == []


def test_singular_forms() -> None:
    assert singular("wire brushes") == "wire brush"
    assert singular("batteries") == "battery"
    assert singular("calipers") == "caliper"
    assert singular("glass") == "glass" and singular("abs") == "abs"


# ---------------------------------------------------------------- the real catalog


def test_on_the_real_catalog_the_corrector_builds_fast_and_fixes_typos() -> None:
    raw = json.loads((data_dir() / "amazon_scientific" / "Scientific.item.json").read_text())
    items = list(raw.values())
    lex = mine_lexicon(
        [i.get("title") or "" for i in items],
        [i.get("brand") or "" for i in items],
        [(i.get("categories") or "").split(",") for i in items],
        [i.get("description") or "" for i in items],
    )
    t0 = time.perf_counter()
    speller = SpellCorrector(lex)
    assert time.perf_counter() - t0 < 3.0
    assert speller.correct("stainles steel screws").text == "stainless steel screws"
    assert speller.correct("sofa table").changes == []  # real words of another domain
    found = AttributeMatcher(lex).match(normalize_query("3M stainless steel 1/2 inch tape"))
    assert {(a.name, a.value) for a in found} >= {
        ("brand", "3m"),
        ("material", "stainless steel"),
        ("size", "0.5 in"),
    }
