"""The artifacts build end to end on a tiny catalog (MiniLM replaced by a fake encoder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models_export import embeddings, pipeline
from models_export.cli import SUBCOMMANDS, build_parser
from models_export.embeddings import EmbedConfig, TextConfig
from models_export.semantic_ids import SidConfig
from services.common.artifacts import ArtifactRepository
from services.retrieval.trie import SidTrie

N_ITEMS = 420  # OPQ needs more items than embedding dimensions (384 + collab)
WORDS = ["steel", "brass", "bolt", "nut", "probe", "meter", "glove", "tape", "wire", "lamp"]


def _fake_encode(texts: list[str], _folder: Path, _config: EmbedConfig) -> np.ndarray:
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        rows.append(np.random.default_rng(seed).standard_normal(embeddings.EMBEDDING_DIM))
    out = np.asarray(rows, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    folder = root / "amazon_scientific"
    folder.mkdir(parents=True)
    items = {
        str(i): {
            "title": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} {WORDS[(i * 7) % 10]} model {i}",
            "description": "a description" if i % 4 else "",
            "brand": f"Brand{i % 5}",
            "categories": f"Industrial & Scientific,Group {i % 3},Kind {i % 6}",
        }
        for i in range(N_ITEMS)
    }
    items["bad"] = {"title": "", "categories": "Industrial & Scientific"}
    rng = np.random.default_rng(0)
    log: dict[str, list[int | str]] = {
        f"u{u}": [int(x) for x in rng.choice(N_ITEMS, size=5 + u % 4, replace=False)]
        for u in range(120)
    }
    log["u0"].insert(1, "bad")  # an interaction with a skipped item: counted, not silent
    (folder / "Scientific.item.json").write_text(json.dumps(items))
    (folder / "Scientific.inter.json").write_text(json.dumps(log))
    return root


TINY = pipeline.BuildSettings(
    quick=True,
    text=TextConfig(),
    embed=EmbedConfig(),
    sids=SidConfig(
        rq_levels=(8,),
        opq_subspaces=2,
        opq_bits=4,
        kmeans_niter=5,
        opq_niter=3,
        threads=1,
        collab_weight=0.2,
        collab_dim=4,
    ),
)


def step_probe(ctx: pipeline.BuildContext) -> str:
    """A step registered the way evaluation/generator helpers add theirs."""
    ctx.path("eval/probe.json").write_text(json.dumps({"items": len(ctx.items())}))
    ctx.eval_results["probe"] = {"ok": True, "quick": ctx.quick}
    return "probe done"


def test_build_writes_a_complete_verified_version(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "_encode", _fake_encode)
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
    assert [name for name, _ in config["step_seconds"]] == [n for n, _ in steps]
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
