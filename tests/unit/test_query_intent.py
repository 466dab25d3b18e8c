"""The category-intent training helpers: splits, derived training queries, calibration."""

from __future__ import annotations

import numpy as np

from models_export import queries
from models_export.ingest import Item
from models_export.query_intent import (
    IntentConfig,
    build_data,
    expected_calibration_error,
    fit_temperature,
    item_split,
    training_queries,
)
from services.common.text import normalize_query
from services.query_understanding.intent import category_label


def _item(n: int, leaf: str) -> Item:
    return Item(
        item_id=f"i{n}",
        title=f"Digital Caliper Stainless Steel Model {n} Precision Gauge",
        brand="Acme Tools",
        description="",
        categories=["Industrial & Scientific", "Test, Measure & Inspect", leaf],
    )


def test_category_label_cuts_the_path_at_the_level() -> None:
    path = ["A", "B", "C", "D"]
    assert category_label(path, 2) == "A > B"
    assert category_label(path, 3) == "A > B > C"
    assert category_label(["A", "B"], 3) == "A > B"


def test_item_split_is_stable_and_roughly_proportional() -> None:
    config = IntentConfig()
    splits = [item_split(f"item-{n}", config) for n in range(5000)]
    assert splits == [item_split(f"item-{n}", config) for n in range(5000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "calibration", "test")}
    assert 0.07 < share["test"] < 0.13 and 0.07 < share["calibration"] < 0.13


def test_training_queries_are_normalised_reproducible_and_from_the_item() -> None:
    items = [_item(n, "Calipers") for n in range(5)]
    idf = queries.TitleIdf.fit(i.title for i in items)
    made = training_queries(items[0], 0, idf, IntentConfig())
    assert made == training_queries(items[0], 0, idf, IntentConfig())
    assert made[0] == queries.category_query(items[0].categories)
    assert all(q == normalize_query(q) and q for q in made)
    assert any("acme tools" in q for q in made)  # brand + title words


def test_build_data_labels_both_levels_and_keeps_test_items_apart() -> None:
    items = [_item(n, leaf) for n in range(60) for leaf in ("Calipers", "Gauges")]
    data = build_data(items, IntentConfig())
    assert (
        data.level3 == sorted({category_label(i.categories, 3) for i in items})
        and len(data.level2) == 1
    )
    for split in ("train", "calibration", "test"):
        assert len(data.texts[split]) == len(data.labels2[split]) == len(data.labels3[split])
    assert data.test_cases and all(kind in ("category", "title") for kind, *_ in data.test_cases)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 6))
    true_t = 2.0
    probs = np.exp(logits / true_t)
    probs /= probs.sum(1, keepdims=True)
    labels = np.array([rng.choice(6, p=p) for p in probs])
    assert abs(fit_temperature(logits, labels) - true_t) < 0.25


def test_calibration_error_is_small_when_confidence_matches_accuracy() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, size=20000)
    right = rng.random(20000) < conf
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = np.stack([np.full(20000, 0.99), np.full(20000, 0.01)], axis=1)
    assert expected_calibration_error(overconfident, labels) > 0.15
