"""Item text builder, cache keys, and (slow) a real 8-item MiniLM embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models_export import embeddings
from models_export.embeddings import (
    EmbedConfig,
    TextConfig,
    cache_key,
    embed_texts,
    item_text,
    truncate_words,
)
from models_export.ingest import Item


def _item(**kw: object) -> Item:
    base: dict[str, object] = {
        "item_id": "1",
        "title": "Digital Caliper.",
        "brand": "Acme",
        "description": "one two three four five six",
        "categories": ["Industrial & Scientific", "Test", "Calipers"],
    }
    base.update(kw)
    return Item(**base)  # type: ignore[arg-type]


def test_item_text_has_all_parts_in_order() -> None:
    text = item_text(_item())
    assert text == (
        "Digital Caliper. Brand: Acme. Category: Industrial & Scientific > Test > Calipers. "
        "one two three four five six"
    )


def test_item_text_truncates_description_and_categories() -> None:
    config = TextConfig(max_description_words=3, max_category_levels=2)
    text = item_text(_item(), config)
    assert text.endswith("Category: Industrial & Scientific > Test. one two three")
    assert "four" not in text and "Calipers" not in text
    assert truncate_words("  a  b c ", 2) == "a b"


def test_item_text_leaves_out_missing_parts() -> None:
    text = item_text(_item(brand="", description="", categories=[]))
    assert text == "Digital Caliper."
    assert "Brand" not in item_text(_item(brand=""))


def test_cache_key_depends_on_texts_model_and_length() -> None:
    base = cache_key(["a", "b"], "m1", EmbedConfig())
    assert base == cache_key(["a", "b"], "m1", EmbedConfig(batch_size=8))  # batch: same result
    assert base != cache_key(["b", "a"], "m1", EmbedConfig())
    assert base != cache_key(["ab"], "m1", EmbedConfig())  # text boundaries count
    assert base != cache_key(["a", "b"], "m2", EmbedConfig())
    assert base != cache_key(["a", "b"], "m1", EmbedConfig(max_seq_length=64))


def test_cache_hit_skips_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"w")
    calls: list[int] = []

    def fake_encode(texts: list[str], _folder: Path, _config: EmbedConfig) -> np.ndarray:
        calls.append(len(texts))
        out = np.ones((len(texts), embeddings.EMBEDDING_DIM), dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    monkeypatch.setattr(embeddings, "_encode", fake_encode)
    first = embed_texts(["x", "y"], cache_dir=tmp_path / "cache", folder=folder)
    second = embed_texts(["x", "y"], cache_dir=tmp_path / "cache", folder=folder)
    assert calls == [2]
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.vectors, second.vectors)
    (folder / "weights.bin").write_bytes(b"other weights")  # new model -> new key
    third = embed_texts(["x", "y"], cache_dir=tmp_path / "cache", folder=folder)
    assert not third.cache_hit and calls == [2, 2]


def test_model_dir_is_found_in_the_installed_package() -> None:
    folder = embeddings.model_dir()
    assert (folder / "modules.json").is_file()
    assert (folder / "config.json").is_file()


@pytest.mark.slow
def test_real_minilm_embeds_eight_items(tmp_path: Path) -> None:
    items = [
        _item(item_id=str(i), title=t)
        for i, t in enumerate(
            [
                "Digital caliper",
                "Vernier caliper",
                "Hex bolts",
                "Hex nuts",
                "Safety goggles",
                "Lab goggles",
                "Soldering iron",
                "Solder wire",
            ]
        )
    ]
    result = embeddings.embed_items(
        items,
        TextConfig(max_description_words=0),
        EmbedConfig(batch_size=4),
        cache_dir=tmp_path,
    )
    v = result.vectors
    assert v.shape == (8, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2]  # calipers closer to calipers than to bolts
    assert sim[4, 5] > sim[4, 6]
    assert len(list(tmp_path.glob("*.npy"))) == 1
