"""Constrained beam search kept on the decoding device (``GENSEARCH_RETRIEVAL_IO_BINDING``).

The host search (:class:`services.retrieval.beam_search.BeamSearch`) copies each step's
logits to the host and walks the trie's edge lists there. This one keeps everything that
grows with batch × beam on the device, as ``xp`` array programs (CuPy on a GPU, numpy
otherwise, where it runs and is tested): the decoder's logits and K/V (I/O binding, see
``IoBindingStepModel``), the trie masks and node steps (:class:`DeviceTrie`), the masked
log-softmax and the per-query top-k. Per level the host reads one scalar (the number of
live beams, which sizes the next step) and, after the last level, the finished beams'
leaves and scores (Q × W numbers) to turn leaves into item rows.

It is the same search as the host one: scores renormalised over the valid tokens (float64
sums, float32 scores between levels, as ``search_kernels``), the best ``beam_width``
continuations per query with ties broken by (beam, token) order, results best first.
Differences: every live beam runs the decoder (the host search skips beams whose path is
forced; their score cannot change either way: log 1 = 0), and it serves the common batch
only — one trie without a cold-start delta, one beam width, no exclusions, no node bonus;
:meth:`DeviceBeamSearch.supports` says so and the generator takes the host search for the
rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from services.common.errors import InvalidInputError
from services.retrieval.beam_search import MAX_BEAM_WIDTH, SearchOptions, SearchResult, StepTimes
from services.retrieval.device_masks import DeviceTrie, XpArray, to_host
from services.retrieval.encoding import DECODER_START_ID, PAD_ID, EncoderBatch, TokenLayout


class DeviceStepModel(Protocol):
    """The device face of a step model (``IoBindingStepModel``): the cross state and the
    cache are opaque device values; ``step_device`` takes ``xp`` tokens (Q, W) and cache
    rows (Q * W,) and returns ``xp`` logits (Q * W, V_dec)."""

    def encode_device(self, input_ids: Any, attention_mask: Any) -> list[Any]: ...

    def empty_cache_device(self, rows: int) -> list[Any]: ...

    def step_device(
        self,
        tokens: Any,
        beam_rows: Any,
        cache: Sequence[Any],
        cross: Sequence[Any],
        xp: ModuleType,
    ) -> tuple[Any, list[Any]]: ...


def masked_log_softmax(xp: ModuleType, logits: XpArray, mask: XpArray, scores: XpArray) -> XpArray:
    """(rows, V) float32 candidate scores: ``scores[row]`` + the log-probability of each
    allowed token renormalised over the row's allowed tokens; -inf where not allowed (and
    on rows with no allowed token). ``logits`` (rows, V) float32, ``mask`` bool."""
    values = xp.where(mask, logits.astype(np.float64), -np.inf)
    top = values.max(axis=1, keepdims=True)
    top = xp.where(xp.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = top + xp.log(xp.exp(values - top).sum(axis=1, keepdims=True))
        cand = xp.where(mask, scores.astype(np.float64)[:, None] + (values - norm), -np.inf)
    return cand.astype(np.float32)


class DeviceBeamSearch:
    """Batched constrained beam search whose per-step state lives on ``trie.xp``'s device."""

    def __init__(self, model: DeviceStepModel, layout: TokenLayout, trie: DeviceTrie) -> None:
        if trie.depth != layout.depth or trie.codebook_sizes != tuple(layout.codebook_sizes):
            raise InvalidInputError(
                f"trie codebooks {trie.codebook_sizes} do not match the model's "
                f"{layout.codebook_sizes}"
            )
        self.model = model
        self.layout = layout
        self.trie = trie
        self.xp = trie.xp
        self.times = StepTimes()

    def supports(self, options: Sequence[SearchOptions]) -> bool:
        """Whether this search serves the batch: every query on this trie (or the default),
        one beam width, no exclusions, no node bonus."""
        if not options or len(self.trie.source) != self.trie.n_items:  # items added since
            return False
        width = options[0].beam_width
        return all(
            (o.trie is None or o.trie is self.trie.source)
            and o.beam_width == width
            and (o.exclude is None or not len(o.exclude))
            and o.node_bonus is None
            for o in options
        )

    def search(self, batch: EncoderBatch, options: Sequence[SearchOptions]) -> list[SearchResult]:
        """Decode every query of ``batch``; one result per query (see :meth:`supports`)."""
        if len(batch) != len(options):
            raise InvalidInputError(f"{len(batch)} inputs but {len(options)} option sets")
        if not options:
            return []
        if not self.supports(options):
            raise InvalidInputError("this batch needs the host search (see supports())")
        beam = options[0].beam_width
        if not 1 <= beam <= MAX_BEAM_WIDTH:
            raise InvalidInputError(f"beam_width must be in [1, {MAX_BEAM_WIDTH}], got {beam}")
        t_start = time.perf_counter()
        xp, trie, layout = self.xp, self.trie, self.layout
        q_count = len(options)
        model_s = 0.0
        t0 = time.perf_counter()
        cross = self.model.encode_device(batch.input_ids, batch.attention_mask)
        cache = self.model.empty_cache_device(q_count)
        model_s += time.perf_counter() - t0
        q_index = xp.arange(q_count, dtype=np.int64)[:, None]
        nodes = xp.zeros((q_count, 1), dtype=np.int64)  # local ids: the root
        scores = xp.zeros((q_count, 1), dtype=np.float32)
        tokens = xp.full((q_count, 1), DECODER_START_ID, dtype=np.int64)
        rows = xp.arange(q_count, dtype=np.int64)  # each beam's row in ``cache``
        for level in range(layout.depth):
            width_in = nodes.shape[1]
            size = layout.codebook_sizes[level]
            offset = layout.level_offsets[level]
            t0 = time.perf_counter()
            logits, cache = self.model.step_device(tokens, rows, cache, cross, xp)
            model_s += time.perf_counter() - t0
            mask = trie.mask(level, nodes.reshape(-1))
            cand = masked_log_softmax(
                xp, logits[:, offset : offset + size], mask, scores.reshape(-1)
            ).reshape(q_count, width_in * size)
            keep = min(beam, width_in * size)
            order = self._top(cand, keep)
            top_scores = xp.take_along_axis(cand, order, axis=1)
            live = int(xp.isfinite(top_scores).sum(axis=1).max())  # one scalar to the host
            if live == 0:
                empty = SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
                return [empty for _ in options]
            order, top_scores = order[:, :live], top_scores[:, :live]
            finite = xp.isfinite(top_scores)
            parent, token = order // size, order % size
            child = trie.advance(level, xp.take_along_axis(nodes, parent, axis=1), token)
            nodes = xp.where(finite, child, trie.dead(level + 1))
            scores = top_scores
            tokens = xp.where(finite, token + offset, PAD_ID)
            rows = (q_index * width_in + parent).reshape(-1)
        results = self._collect(to_host(nodes), to_host(scores), options)
        self.times.model += model_s
        self.times.total += time.perf_counter() - t_start
        self.times.calls += 1
        return results

    def _top(self, cand: XpArray, keep: int) -> XpArray:
        """Indices of the ``keep`` best candidates per row, best first, ties by index."""
        if self.xp is np:
            return np.argsort(-cand, axis=1, kind="stable")[:, :keep]
        return self.xp.argsort(-cand, axis=1)[:, :keep]  # CuPy's sort is stable (radix)

    def _collect(
        self, leaves: np.ndarray, scores: np.ndarray, options: Sequence[SearchOptions]
    ) -> list[SearchResult]:
        """Finished beams (best first) → up to ``k`` item rows per query."""
        dead = self.trie.dead(self.layout.depth)
        out: list[SearchResult] = []
        for q, o in enumerate(options):
            items: list[int] = []
            item_scores: list[float] = []
            for leaf, score in zip(leaves[q].tolist(), scores[q].tolist(), strict=True):
                if len(items) >= o.k:
                    break
                if leaf == dead or not np.isfinite(score):
                    continue
                for row in self.trie.leaf_rows(leaf).tolist():
                    items.append(row)
                    item_scores.append(score)
                    if len(items) >= o.k:
                        break
            out.append(
                SearchResult(
                    np.asarray(items, dtype=np.int64), np.asarray(item_scores, dtype=np.float32)
                )
            )
        return out
