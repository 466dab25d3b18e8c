"""The artifacts build end to end on a tiny catalog (MiniLM replaced by a fake encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models_export import embeddings, pipeline
from models_export.cli import SUBCOMMANDS, build_parser
from services.common.artifacts import ArtifactRepository
from services.retrieval.trie import SidTrie
from tests.synthetic_catalog import (
    N_ITEMS,
    TINY,
    fake_encode,
    make_items,
    make_log,
    write_dataset,
)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """The default dataset (``amazon_scientific/Scientific``) with one bad item and one
    interaction with it."""
    items = make_items(top_category="Industrial & Scientific")
    items["bad"] = {"title": "", "categories": "Industrial & Scientific"}
    log = make_log()
    log["u0"].insert(1, "bad")  # an interaction with a skipped item: counted, not silent
    return write_dataset(tmp_path / "data", "amazon_scientific/Scientific", items=items, log=log)


def step_probe(ctx: pipeline.BuildContext) -> str:
    """A step registered the way evaluation/generator helpers add theirs."""
    ctx.path("eval/probe.json").write_text(json.dumps({"items": len(ctx.items())}))
    ctx.eval_results["probe"] = {"ok": True, "quick": ctx.quick}
    return "probe done"


def test_build_writes_a_complete_verified_version(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "_encode", fake_encode)
    monkeypatch.setenv(embeddings.CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "artifacts"
    # The data steps only (model training/evaluation steps are tested by their owners).
    core = {"ingest", "queries", "embeddings", "semantic_ids", "trie"}
    steps = [s for s in pipeline.STEPS if s[0] in core] + [("probe", f"{__name__}:step_probe")]
    ctx = pipeline.build(root, tiny_data, steps=steps, settings=TINY)

    repo = ArtifactRepository(root)
    assert repo.current() == ctx.version
    art = repo.open()
    art.verify()
    for rel in [
        "tables/items.parquet",
        "tables/users.parquet",
        "tables/queries.parquet",
        "tables/ingest_report.json",
        "embeddings/items.npy",
        "embeddings/meta.json",
        "sids/codes.npy",
        "sids/codebooks.npz",
        "sids/meta.json",
        "sids/report.json",
        "sids/trie.npz",
        "eval/probe.json",
    ]:
        assert art.has(rel), rel
    config = art.manifest.config
    assert config["build"] == "quick"
    assert config["has_text"] is True
    assert config["data"]["name"] == "amazon_scientific/Scientific"
    assert set(config["data"]["files"]) == {"items", "log"}
    assert config["data"]["files"]["log"]["path"] == "amazon_scientific/Scientific.inter.json"
    assert [name for name, _ in config["step_seconds"]] == [n for n, _ in steps]

    # a step added later runs on a copy of the built version, into a new verified version
    from models_export.dataset_files import named

    extended = pipeline.extend(root, ctx.version, ["lexical"], named(tiny_data))
    new = repo.open()
    assert new.version == extended.version != ctx.version
    new.verify()
    assert new.has("lexical/config.json") and not art.has("lexical/config.json")
    assert new.manifest.config["extended_from"] == {
        "version": ctx.version,
        "steps": ["lexical"],
        "settings": "quick",
    }
    assert new.has("eval/probe.json")  # everything the base version held is kept
    assert art.manifest.eval["probe"] == {"ok": True, "quick": True}
    assert art.manifest.eval["queries"]["derived"] is True

    n_items = pq.read_table(art.path("tables/items.parquet")).num_rows
    assert n_items == N_ITEMS
    report = art.read_json("tables/ingest_report.json")
    assert report["items_skipped"] == 1 and report["interactions_skipped"] == 1
    assert {i["record"] for i in report["issues"]} == {"bad", "user u0[1]"}

    codes = np.load(art.path("sids/codes.npy"))
    assert codes.shape == (N_ITEMS, 3) and codes.dtype == np.int32
    assert len({tuple(r) for r in codes.tolist()}) == N_ITEMS
    vectors = np.load(art.path("embeddings/items.npy"))
    assert vectors.shape == (N_ITEMS, 384) and vectors.dtype == np.float32
    trie = SidTrie.load(art.path("sids/trie.npz"))
    assert len(trie) == N_ITEMS and trie.version == ctx.version
    assert trie.codebook_sizes == (8, 16, 16)

    queries = pq.read_table(art.path("tables/queries.parquet")).to_pylist()
    assert queries and all(q["derived"] for q in queries)
    assert {q["kind"] for q in queries} == {"category", "title"}


def test_version_name_and_cli_registration() -> None:
    version = pipeline.make_version({"a": 1}, now=0)
    assert version.startswith("19700101-000000-") and len(version.split("-")[-1]) == 8
    assert version != pipeline.make_version({"a": 2}, now=0)
    names = [name for name, _, _ in SUBCOMMANDS]
    assert "artifacts" in names and len(set(names)) == len(names)
    args = build_parser(["artifacts", "--quick"]).parse_args(["artifacts", "--quick"])
    assert args.quick and args._run is pipeline.run
