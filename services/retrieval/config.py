"""Retrieval service settings (env prefix ``GENSEARCH_RETRIEVAL_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="GENSEARCH_RETRIEVAL_", extra="ignore", frozen=True
    )

    default_beam_width: int = Field(20, ge=1, le=128)
    max_beam_width: int = Field(128, ge=1, le=512)
    max_k: int = Field(200, ge=1)
    history_len: int = Field(20, ge=0, le=50, description="most recent items fed to the encoder")
    max_batch_size: int = Field(16, ge=1, le=256, description="dynamic batcher: max requests")
    # 0 = greedy batching: a request that finds the decoder idle runs at once, and the
    # requests that arrive while a batch decodes form the next batch. Measured (see
    # docs/results/generative_benchmark.md): a 2 ms delay about doubled p50 at concurrency
    # 1 and made no difference beyond run-to-run noise at concurrency 8.
    max_queue_delay_ms: float = Field(0.0, ge=0, description="dynamic batcher: max wait")
    ann_fill: bool = Field(True, description="fill from the ANN index when decoding is short")
    # Fraction of the remaining budget decoding may plan to use (the rest is queueing,
    # ANN fill and the reply).
    decode_budget_fraction: float = Field(0.7, gt=0, le=1)
    filter_cache_size: int = Field(256, ge=1, description="category-filter sub-tries kept")
    # The generator's encoder runs once per query and is compute-bound: on a machine with a
    # spare core, 2 (spinning) threads cut its time; the decoder steps stay on
    # INTRA_OP_THREADS. 0 = INTRA_OP_THREADS.
    encoder_threads: int = Field(0, ge=0, le=64, description="generator encoder threads")
    # Recommendation requests (history, no query text) decode with the artifact's
    # co-visitation prior fused in, at the weight chosen on validation (0 there = off).
    covisit_prior: bool = Field(True, description="fuse the co-visitation prior when present")
    covisit_prior_weight: float | None = Field(
        None, ge=0, description="override the artifact's prior weight (0 = off)"
    )
    # Hybrid candidates for requests with query text: each source can be switched off.
    # History-only requests always decode with the generator (+ the co-visitation prior).
    source_generated: bool = Field(True, description="constrained generator for text queries")
    source_lexical: bool = Field(True, description="BM25 over item text (the artifact's index)")
    source_dense: bool = Field(True, description="query embedding against item embeddings")
    # Items each source hands to the fusion (at least k): a deeper list lets an item that
    # two sources rank moderately beat one that a single source ranks first.
    fusion_depth: int = Field(20, ge=1, le=200, description="candidates per source to fuse")
    # GPU path (docs/gpu.md); where the ONNX models run is GENSEARCH_ONNX_PROVIDERS.
    # I/O binding keeps the generator's K/V on the session's device and decodes the common
    # batch (one trie, one beam width, no exclusions or prior) there, trie masks included
    # (CuPy when a CUDA device is usable, else numpy). Off by default: on the CPU the host
    # search is faster (it skips forced beams and walks edge lists, not dense masks).
    io_binding: bool = Field(False, description="decode through ONNX Runtime I/O binding")
    # Move the exact (flat) ANN index to the GPU when faiss reports one; HNSW stays on CPU.
    ann_gpu: bool = Field(False, description="faiss index on the GPU when one is present")
