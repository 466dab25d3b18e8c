"""Derived queries: Ai et al. category queries and IDF title queries."""

from __future__ import annotations

from models_export.ingest import Item, UserSplit
from models_export.queries import (
    STOPWORDS,
    TitleIdf,
    category_query,
    derive_queries,
    title_query,
    title_word_count,
)


def _item(item_id: str, title: str, categories: list[str], brand: str = "") -> Item:
    return Item(item_id, title, brand, "", categories)


CATALOG = [
    _item(
        "1",
        "Acme Digital Caliper Stainless Steel 6 Inch",
        ["Industrial & Scientific", "Test, Measure & Inspect", "Calipers"],
        brand="Acme",
    ),
    _item(
        "2",
        "Digital Multimeter with Probe Leads",
        ["Industrial & Scientific", "Test, Measure & Inspect", "Multimeters"],
    ),
    _item(
        "3",
        "Stainless Steel Hex Bolts Assortment",
        ["Industrial & Scientific", "Fasteners", "Bolts"],
    ),
    _item(
        "4",
        "Hex Nuts Stainless Steel Assortment Kit",
        ["Industrial & Scientific", "Fasteners", "Nuts"],
    ),
    _item(
        "5", "Probe Leads for Multimeter", ["Industrial & Scientific", "Test, Measure & Inspect"]
    ),
    _item("6", "Widget", []),
]


def test_category_query_dedups_and_drops_stopwords() -> None:
    query = category_query(["Industrial & Scientific", "Lab & Scientific Products", "Tubes"])
    assert query == "industrial scientific lab products tubes"
    assert category_query(["Tools and the Parts", "Tools"]) == "tools parts"
    assert category_query([]) == ""
    assert not set(category_query(["Of The And", "For With"]).split()) & STOPWORDS


def test_title_query_uses_informative_shared_words_in_title_order() -> None:
    idf = TitleIdf.fit(i.title for i in CATALOG)
    query = title_query(CATALOG[0], idf)
    assert query is not None
    words = query.split()
    assert 2 <= len(words) <= 4
    assert "acme" not in words  # brand words are left out
    assert "6" not in words  # model numbers / digits are left out
    title_words = CATALOG[0].title.lower().split()
    assert words == sorted(words, key=title_words.index)  # kept in title order
    # Words that appear in only one title are not used while shared ones suffice.
    assert all(idf.df[w] >= 2 for w in words)


def test_title_query_prefers_rarer_words() -> None:
    titles = ["alpha beta gamma"] * 2 + ["alpha beta"] * 5 + ["alpha"] * 10
    items = [_item(str(i), t, []) for i, t in enumerate(titles)]
    idf = TitleIdf.fit(titles)
    # item "0" with k = title_word_count("0"): the rarest words win.
    k = title_word_count("0")
    expected = ["alpha", "beta", "gamma"][3 - min(k, 3) :]
    assert title_query(items[0], idf) == " ".join(expected)


def test_title_query_needs_two_words() -> None:
    idf = TitleIdf.fit(i.title for i in CATALOG)
    assert title_query(CATALOG[5], idf) is None


def test_title_word_count_is_deterministic_and_bounded() -> None:
    counts = {title_word_count(str(i)) for i in range(200)}
    assert counts == {2, 3, 4}
    assert title_word_count("abc") == title_word_count("abc")


def test_derive_queries_rows_are_marked_derived_and_deterministic() -> None:
    users = [UserSplit("u1", ["3"], "1", "2"), UserSplit("u2", ["1"], "4", "6")]
    first = derive_queries(CATALOG, users)
    second = derive_queries(CATALOG, users)
    assert first.rows == second.rows
    assert all(r["derived"] is True for r in first.rows)
    table = first.table()
    assert table.column("derived").to_pylist() == [True] * table.num_rows
    keys = {(r["user_id"], r["split"], r["kind"]) for r in first.rows}
    # item 6 has neither a category path nor a usable title: u2's test rows are absent.
    assert ("u2", "test", "category") not in keys and ("u2", "test", "title") not in keys
    assert ("u1", "valid", "category") in keys and ("u1", "test", "title") in keys
    row = next(
        r
        for r in first.rows
        if r["user_id"] == "u1" and r["split"] == "valid" and r["kind"] == "category"
    )
    assert row["target_item_id"] == "1"
    assert row["query"] == "industrial scientific test measure inspect calipers"
    assert first.items_without_title_query == ["6"]
    assert first.items_without_category_query == ["6"]
