"""Retrieval-specific Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS

BATCH_SIZE = Histogram(
    "gensearch_retrieval_batch_size",
    "Requests decoded together by the dynamic batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_SECONDS = Histogram(
    "gensearch_retrieval_batch_seconds",
    "Time to decode one batch (all steps).",
    buckets=LATENCY_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "gensearch_retrieval_queue_seconds",
    "Time a request waits in the dynamic batcher before its batch starts decoding.",
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
)
DECODE_STEPS = Counter(
    "gensearch_retrieval_decode_steps_total", "Decoder steps run (one per SID level per batch)."
)
STEP_SECONDS = Histogram(
    "gensearch_retrieval_decode_step_seconds",
    "Time of one decoder step for a whole batch.",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1),
)
ITEMS = Counter("gensearch_retrieval_items_total", "Items returned, by source.", ["source"])
FILL = Counter(
    "gensearch_retrieval_ann_fill_total",
    "Requests whose decoding yielded fewer than k items and were filled from the ANN index.",
)
INVALID_SIDS = Counter(
    "gensearch_retrieval_invalid_sids_total",
    "Generated SIDs that named no item (must stay 0: decoding is trie-constrained).",
)
BEAM_REDUCED = Counter(
    "gensearch_retrieval_beam_reduced_total",
    "Requests decoded with a smaller beam than asked because of the deadline.",
)
PRIOR = Counter(
    "gensearch_retrieval_prior_total",
    "History-only requests by what the co-visitation decoding prior did: fused into decoding, "
    "or skipped (the history leads to no co-visited item, or a cold-start delta is pending).",
    ["outcome"],
)
SOURCE_SECONDS = Histogram(
    "gensearch_retrieval_source_seconds",
    "Time of one hybrid side source (lexical, dense) for one request.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
SOURCE_DROPPED = Counter(
    "gensearch_retrieval_source_dropped_total",
    "Hybrid side sources left out of a request's fusion, by source and reason "
    "(timeout: not done within the budget; error: it failed).",
    ["source", "reason"],
)
