"""The trie of valid semantic IDs, as flat numpy arrays, for constrained beam search.

Layout (after the "vectorising the trie" idea of the STATIC paper on constrained
decoding on accelerators): every node is an int64 id; the nodes at depth ``d``
(after ``d`` tokens) are numbered contiguously in lexicographic order of their
prefixes, depth by depth, so the root is 0 and the children of one node form a
contiguous, token-sorted run at the next depth. That gives, per level ``t``
(the token chosen at depth ``t``):

* CSR transitions, always: ``ptr[t]`` (child range of each depth-``t`` node)
  and ``tok[t]`` (child tokens). Child ids are implicit: position in the run
  plus the depth offset. A batch mask from CSR is one ``np.repeat`` over child
  counts and one fancy-indexed assignment.
* Packed masks (``bits[t]``: ``ceil(V_t / 64)`` uint64 words per node, i.e. 32
  bytes for V = 256) wherever the table fits ``TrieLayout.dense_max_bytes`` or
  costs at most ``bits_max_bytes_per_edge`` (so nearly always for V = 256). A
  batch mask is then one gather plus ``np.unpackbits``, and a step is a *rank*:
  ``child = ptr[node] + popcount(bits of the node below the token)``, which
  touches one cache line per row instead of a binary search over all edges.
* Child tables (``walk[t]``: dense ``node * V_t + token -> child``) for the
  top levels, where the table is both small and not too sparse
  (``TrieLayout.walk_max_fill`` cells per edge): a step is one gather.
* Levels too big for packed masks answer steps with ``np.searchsorted`` over
  ``keys[t] = parent_local * V_t + token`` (globally sorted).
* Leaf -> item rows as CSR (``leaf_ptr``, ``leaf_items``; items in SID order,
  ties by row). Duplicate SIDs are allowed: a leaf then names several rows.

Each level's tables carry one extra all-empty "dead" row, so node ``-1`` is
mapped onto it and needs no special case in the vectorised paths.

Cold start (``add_items``): new items go into a small *delta* trie built over
the delta items only (rebuilding it costs O(k log k) for k delta items), plus
the id map between the two tries for prefixes they share. Node ids of prefixes
that exist in the main trie stay main ids; prefixes only in the delta get ids
``main_nodes + delta_id``. ``next_mask`` ORs the delta's mask into rows whose
prefix also exists in the delta, ``advance`` prefers the main child and falls
back to the delta child. With no delta the fast path costs one ``is None``
check. When the delta holds more than ``max(COMPACT_MIN_ITEMS, COMPACT_FRACTION
* main items)`` items it is merged by one full rebuild. This was chosen over
mutable CSR arrays (inserting into sorted flat arrays is O(N) per insert and
renumbers nodes anyway) and over always rebuilding (O(N log N) per cold-start
batch: seconds at 10M items).

Node ids are only meaningful for the trie state that produced them: after
``add_items`` or ``compact`` re-derive them from the root. Readers must not run
concurrently with ``add_items`` on the same object (serving swaps whole tries).

File format (``save``/``load``): one ``.npz`` written with ``allow_pickle=False``
holding the item codes, item rows, the SID order and a JSON header (``meta_json``,
utf-8 bytes) with the format name and version, the artifact version, depth,
codebook sizes and layout. ``load`` rebuilds the flat arrays from the stored SID order
without sorting, and refuses unknown formats or inconsistent files.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval.search_kernels import csr_edges

FORMAT_NAME = "gensearch-sid-trie"
FORMAT_VERSION = 1
#: a level gets a child table / packed masks when that table fits in this many bytes ...
DEFAULT_DENSE_MAX_BYTES = 64 << 20
#: ... and a child table only when it has at most this many cells per existing edge
DEFAULT_WALK_MAX_FILL = 32
#: packed masks are also kept past the byte budget while they cost at most this per edge
#: (the sorted-key fallback costs 8 bytes per edge and a cache-missing binary search)
DEFAULT_BITS_MAX_BYTES_PER_EDGE = 32
#: the delta of cold-start items is merged into the main trie past this many items ...
COMPACT_MIN_ITEMS = 4096
#: ... or past this fraction of the main trie's items, whichever is larger
COMPACT_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class TrieLayout:
    """Memory/speed knobs: which levels get dense tables (the trie's content is the same)."""

    dense_max_bytes: int = DEFAULT_DENSE_MAX_BYTES
    walk_max_fill: int = DEFAULT_WALK_MAX_FILL
    bits_max_bytes_per_edge: int = DEFAULT_BITS_MAX_BYTES_PER_EDGE

    def __post_init__(self) -> None:
        if min(self.dense_max_bytes, self.walk_max_fill, self.bits_max_bytes_per_edge) < 0:
            raise InvalidInputError(f"layout limits must be >= 0, got {self}")


IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
AnyInt = npt.NDArray[np.integer[Any]]


def _code_dtype(codebook_sizes: Sequence[int]) -> np.dtype[Any]:
    """Smallest unsigned dtype able to hold every token."""
    biggest = max(codebook_sizes)
    if biggest <= 1 << 8:
        return np.dtype(np.uint8)
    if biggest <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _index_dtype(n: int) -> np.dtype[Any]:
    return np.dtype(np.int32) if n < (1 << 31) - 1 else np.dtype(np.int64)


def _bits_width(size: int) -> int:
    """Bytes per packed mask row: whole uint64 words, so rows can be popcounted."""
    return 8 * -(-size // 64)


def _packed_masks(parent: IntArray, tokens: AnyInt, n_rows: int, size: int) -> npt.NDArray[Any]:
    """Bit table (n_rows, width) in ``np.packbits`` order: token j is bit 7 - j % 8 of byte j // 8.

    ``(parent, tokens)`` must be sorted, so the bits of one byte are adjacent and
    one ``bitwise_or.reduceat`` merges them.
    """
    width = _bits_width(size)
    table = np.zeros(n_rows * width, dtype=np.uint8)
    if len(parent):
        tok = tokens.astype(np.int64)
        byte = parent * width + (tok >> 3)
        bit = np.right_shift(128, tok & 7).astype(np.uint8)
        starts = np.flatnonzero(np.concatenate([[True], byte[1:] != byte[:-1]]))
        table[byte[starts]] = np.bitwise_or.reduceat(bit, starts)
    return table.reshape(n_rows, width)


def _rank_masks(size: int) -> npt.NDArray[np.uint64]:
    """(size, words): row j has the bits of tokens < j set, laid out like ``_packed_masks``."""
    below = np.arange(_bits_width(size) * 8)[None, :] < np.arange(size)[:, None]
    return np.packbits(below, axis=1).view(np.uint64)


@dataclass(frozen=True, slots=True)
class FlatCsr:
    """Every level's CSR arrays in two flat arrays, for compiled loops that walk several
    levels (``services.retrieval.search_kernels``): level t's ``ptr`` is
    ``ptr[ptr_start[t]:ptr_start[t + 1]]`` (positions in level t's ``tok`` run, which is
    ``tok[tok_start[t]:tok_start[t + 1]]``); ``offsets[d]`` is the global id of the first
    depth-d node, so child position p of level t is node ``offsets[t + 1] + p``. Leaves:
    ``leaf_ptr`` / ``leaf_items`` of the core, depth-L local ids."""

    ptr: AnyInt
    ptr_start: IntArray  # (L + 1,)
    tok: AnyInt
    tok_start: IntArray  # (L + 1,)
    offsets: IntArray  # (L + 2,)

    @classmethod
    def pack(
        cls, ptrs: Sequence[AnyInt], toks: Sequence[AnyInt], offsets: Sequence[int]
    ) -> FlatCsr:
        def starts(parts: Sequence[AnyInt]) -> IntArray:
            return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

        return cls(
            ptr=np.concatenate(ptrs),
            ptr_start=starts(ptrs),
            tok=np.concatenate(toks),
            tok_start=starts(toks),
            offsets=np.asarray(offsets, dtype=np.int64),
        )


@dataclass(frozen=True, slots=True)
class _Core:
    """Immutable flat-array trie over a fixed set of items (no delta).

    Internally nodes are *local* indices within their depth; local ``n_d`` (one
    past the last node of depth ``d``) is the dead node, whose rows are empty.
    Per level, ``mask_local`` uses the packed bits or else CSR, and
    ``step_local`` uses the child table, else a rank over the packed bits
    (``ptr[node] + popcount(bits below token)``), else a search in ``keys``.
    """

    codebook_sizes: tuple[int, ...]
    offsets: tuple[int, ...]  # offsets[d] = global id of the first depth-d node; len L + 2
    ptr: tuple[AnyInt, ...]  # level t: (n_t + 2,) child ranges, the dead node has none
    tok: tuple[AnyInt, ...]  # level t: (n_{t+1},) child tokens, sorted within a node
    walk: tuple[AnyInt | None, ...]  # flat (n_t + 1) * V_t: child local (n_{t+1} = none)
    bits: tuple[npt.NDArray[np.uint8] | None, ...]  # (n_t + 1, bytes) packed masks
    keys: tuple[IntArray | None, ...]  # parent_local * V_t + tok, where there are no bits
    rank_masks: tuple[npt.NDArray[np.uint64] | None, ...]  # from ``_rank_masks``
    leaf_ptr: AnyInt  # (n_L + 2,)
    leaf_items: IntArray  # item rows in SID order
    flat: FlatCsr  # ``ptr`` and ``tok`` are views of its arrays

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    def level_count(self, depth: int) -> int:
        return self.offsets[depth + 1] - self.offsets[depth]

    def representation(self, level: int) -> str:
        """How ``level`` answers masks / steps, e.g. ``"bits/walk"`` (for reports)."""
        mask = "bits" if self.bits[level] is not None else "csr"
        if self.walk[level] is not None:
            return f"{mask}/walk"
        return f"{mask}/{'rank' if self.bits[level] is not None else 'search'}"

    @classmethod
    def from_sorted(
        cls,
        codes: AnyInt,
        rows: IntArray,
        codebook_sizes: tuple[int, ...],
        layout: TrieLayout,
    ) -> _Core:
        """Build from codes already sorted by (SID, row); ``rows`` are the item row labels."""
        n, depth = codes.shape
        idx_dtype = _index_dtype(n + 1)
        # new_prefix[:, d] is True where the length-(d+1) prefix differs from the row above
        new_prefix = np.ones((n, depth), dtype=bool)
        if n > 1:
            np.logical_or.accumulate(codes[1:] != codes[:-1], axis=1, out=new_prefix[1:])
        counts = [1] + [int(new_prefix[:, d].sum()) for d in range(depth)]
        offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)]))

        parent_local = np.zeros(n, dtype=np.int64)  # each row's node at the current depth
        ptrs: list[AnyInt] = []
        toks: list[AnyInt] = []
        walks: list[AnyInt | None] = []
        bit_tables: list[npt.NDArray[np.uint8] | None] = []
        keys: list[IntArray | None] = []
        rank_masks: list[npt.NDArray[np.uint64] | None] = []
        for t in range(depth):
            size = codebook_sizes[t]
            n_parent, n_child = counts[t], counts[t + 1]
            first = new_prefix[:, t]
            child_parent = parent_local[first]
            child_tok = codes[first, t]
            ptr = np.zeros(n_parent + 2, dtype=idx_dtype)
            np.cumsum(np.bincount(child_parent, minlength=n_parent), out=ptr[1 : n_parent + 1])
            ptr[n_parent + 1] = ptr[n_parent]  # the dead node has no children
            ptrs.append(ptr)
            toks.append(child_tok)
            key = child_parent * size + child_tok.astype(np.int64)  # sorted
            cells = (n_parent + 1) * size
            walk_dtype = _index_dtype(n_child + 1)
            if (
                cells * walk_dtype.itemsize <= layout.dense_max_bytes
                and cells <= layout.walk_max_fill * (n_child + 1)
            ):
                walk = np.full(cells, n_child, dtype=walk_dtype)
                walk[key] = np.arange(n_child, dtype=walk_dtype)
                walks.append(walk)
            else:
                walks.append(None)
            bits_bytes = (n_parent + 1) * _bits_width(size)
            if bits_bytes <= max(layout.dense_max_bytes, layout.bits_max_bytes_per_edge * n_child):
                bit_tables.append(_packed_masks(child_parent, child_tok, n_parent + 1, size))
                rank_masks.append(_rank_masks(size) if walks[-1] is None else None)
                keys.append(None)
            else:
                bit_tables.append(None)
                rank_masks.append(None)
                keys.append(key if walks[-1] is None else None)
            parent_local = np.cumsum(first, dtype=np.int64) - 1

        flat = FlatCsr.pack(ptrs, toks, offsets)
        ptrs = [flat.ptr[a:b] for a, b in itertools.pairwise(flat.ptr_start)]
        toks = [flat.tok[a:b] for a, b in itertools.pairwise(flat.tok_start)]
        leaf_ptr = np.zeros(counts[depth] + 2, dtype=idx_dtype)
        np.cumsum(np.bincount(parent_local, minlength=counts[depth]), out=leaf_ptr[1:-1])
        leaf_ptr[-1] = leaf_ptr[-2]
        return cls(
            codebook_sizes=codebook_sizes,
            offsets=offsets,
            ptr=tuple(ptrs),
            tok=tuple(toks),
            walk=tuple(walks),
            bits=tuple(bit_tables),
            keys=tuple(keys),
            rank_masks=tuple(rank_masks),
            leaf_ptr=leaf_ptr,
            leaf_items=np.ascontiguousarray(rows, dtype=np.int64),
            flat=flat,
        )

    def to_local(self, depth: int, nodes: IntArray) -> IntArray:
        """Local index at ``depth`` of global ids or -1 (-> the dead node)."""
        lo = self.offsets[depth]
        return np.where(nodes < 0, self.offsets[depth + 1] - lo, nodes - lo)

    def to_global(self, depth: int, local: AnyInt) -> IntArray:
        """Global ids (-1 for the dead node) of local indices at ``depth``."""
        lo = self.offsets[depth]
        return np.where(local == self.offsets[depth + 1] - lo, -1, local + np.int64(lo))

    def mask_local(self, level: int, local: AnyInt) -> BoolArray:
        """Valid-next-token mask of depth-``level`` local nodes (a fresh array)."""
        size = self.codebook_sizes[level]
        batch = len(local)
        bits = self.bits[level]
        if bits is not None:
            rows = np.take(bits, local, axis=0)
            if bits.shape[1] * 8 == size:  # the flat unpack is the fastest form
                return np.unpackbits(rows.reshape(-1)).reshape(batch, size).view(np.bool_)
            return np.unpackbits(rows, axis=1, count=size).view(np.bool_)
        out = np.zeros(batch * size, dtype=bool)
        index, token, _ = self.edges_local(level, local)
        out[index * size + token] = True
        return out.reshape(batch, size)

    def edges_local(self, level: int, local: AnyInt) -> tuple[IntArray, IntArray, IntArray]:
        """Every edge leaving depth-``level`` local nodes, from the CSR run of each node:
        (position in ``local``, token, global child id), positions ascending."""
        return csr_edges(self.ptr[level], self.tok[level], local, self.offsets[level + 1])

    def step_local(self, level: int, local: AnyInt, tokens: AnyInt) -> AnyInt:
        """Depth-(level+1) local children; ``tokens`` must be inside the codebook."""
        size = self.codebook_sizes[level]
        walk = self.walk[level]
        if walk is not None:
            return np.take(walk, local * size + tokens)
        n_child = self.level_count(level + 1)
        bits = self.bits[level]
        rank_masks = self.rank_masks[level]
        if bits is not None and rank_masks is not None:
            # child = first child + number of siblings with a smaller token, if the bit is set
            words = np.take(bits.view(np.uint64), local, axis=0)
            below = np.take(rank_masks, tokens, axis=0)
            rank = np.bitwise_count(words & below).sum(axis=1, dtype=np.int64)
            byte = np.take(bits, local * bits.shape[1] + (tokens >> 3))
            exists = (byte << (tokens & 7).astype(np.uint8)) & 128
            return np.where(exists, np.take(self.ptr[level], local) + rank, n_child)
        keys = self.keys[level]
        assert keys is not None
        if not n_child:
            return np.zeros(len(local), dtype=np.int64)
        # the dead node's query is above every key, so it never matches
        query = local * size + tokens
        pos = np.searchsorted(keys, query)
        found = keys[np.minimum(pos, n_child - 1)] == query
        return np.where(found, pos, n_child)

    def advance(self, level: int, nodes: IntArray, tokens: AnyInt) -> IntArray:
        """Global child ids after ``tokens`` (any ints); -1 where there is no such edge."""
        local = self.to_local(level, nodes)
        in_range = (tokens >= 0) & (tokens < self.codebook_sizes[level])
        local = np.where(in_range, local, self.level_count(level))
        child = self.step_local(level, local, np.where(in_range, tokens, 0))
        return self.to_global(level + 1, child)

    def mask(self, level: int, nodes: IntArray) -> BoolArray:
        """Valid-next-token mask of global depth-``level`` ids (or -1)."""
        return self.mask_local(level, self.to_local(level, nodes))

    def leaf_rows(self, leaf_local: int) -> IntArray:
        return self.leaf_items[self.leaf_ptr[leaf_local] : self.leaf_ptr[leaf_local + 1]]

    def child_parents(self, level: int) -> IntArray:
        """Global parent id of every depth-(level+1) node, in node order."""
        n_parent = self.level_count(level)
        counts = np.diff(self.ptr[level][: n_parent + 1])
        return np.repeat(np.arange(n_parent, dtype=np.int64), counts) + self.offsets[level]

    def subtree_sums(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """(Q, num_nodes): per row of ``values`` (Q, item rows), the sum over the items under
        every node (global ids). Each node's items are one contiguous run in SID order, so
        this is one ``reduceat`` per depth, leaves first."""
        out = np.zeros((values.shape[0], self.num_nodes), dtype=np.float64)
        depth, off = self.depth, self.offsets
        n_leaf = self.level_count(depth)
        if not n_leaf:
            return out
        per_item = values[:, self.leaf_items]
        out[:, off[depth] : off[depth + 1]] = np.add.reduceat(
            per_item, self.leaf_ptr[:n_leaf].astype(np.int64), axis=1
        )
        for t in range(depth - 1, -1, -1):  # every inner node has at least one child
            below = out[:, off[t + 1] : off[t + 2]]
            starts = self.ptr[t][: self.level_count(t)].astype(np.int64)
            out[:, off[t] : off[t + 1]] = np.add.reduceat(below, starts, axis=1)
        return out

    def nbytes(self) -> int:
        arrays: list[np.ndarray[Any, Any] | None] = [self.leaf_ptr, self.leaf_items]
        arrays += [self.flat.ptr, self.flat.tok]  # ``ptr`` / ``tok`` are views of these
        arrays += [*self.walk, *self.bits, *self.keys, *self.rank_masks]
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass(frozen=True, slots=True)
class _Delta:
    """Cold-start items kept beside the main trie until the next compaction."""

    core: _Core
    to_main: IntArray  # main id of every delta node's prefix, or -1
    main_keys: IntArray  # sorted main ids that also exist in the delta
    main_vals: IntArray  # the delta id of each of those

    @classmethod
    def create(cls, main: _Core, core: _Core) -> _Delta:
        to_main = np.full(core.num_nodes, -1, dtype=np.int64)
        to_main[0] = 0  # the roots coincide
        for t in range(core.depth):
            parents = core.child_parents(t)
            lo, hi = core.offsets[t + 1], core.offsets[t + 2]
            to_main[lo:hi] = main.advance(t, to_main[parents], core.tok[t].astype(np.int64))
        shared = np.flatnonzero(to_main >= 0)
        order = np.argsort(to_main[shared])
        return cls(core, to_main, to_main[shared][order], shared[order].astype(np.int64))

    def from_main(self, nodes: IntArray) -> IntArray:
        """Delta id of the prefix named by main ids (-1 where the delta lacks it)."""
        pos = np.searchsorted(self.main_keys, nodes)
        pos_c = np.minimum(pos, len(self.main_keys) - 1)
        return np.where(self.main_keys[pos_c] == nodes, self.main_vals[pos_c], -1)


def _sort_items(
    codes: npt.NDArray[np.integer[Any]], rows: IntArray, codebook_sizes: tuple[int, ...]
) -> tuple[npt.NDArray[np.integer[Any]], IntArray]:
    """Order items by (SID, row); ``rows`` must be ascending."""
    key = _sid_keys(codes, codebook_sizes)
    # both sorts are stable, so ties keep the ascending row order
    order = np.argsort(key, kind="stable") if key is not None else np.lexsort(codes.T[::-1])
    return codes[order], rows[order]


def _sid_keys(codes: AnyInt, codebook_sizes: tuple[int, ...]) -> IntArray | None:
    """One int64 per SID that sorts like the SID, or None when it would overflow."""
    if sum(math.log2(max(v, 2)) for v in codebook_sizes) >= 62:
        return None
    key = np.zeros(len(codes), dtype=np.int64)
    for t, size in enumerate(codebook_sizes):
        key *= size
        key += codes[:, t]
    return key


class SidTrie:
    """Trie of the valid semantic IDs of a catalog, for constrained decoding.

    Node ids are int64, root 0, -1 = dead. ``level`` t means "the t-th token";
    ``next_mask(t, nodes)`` takes depth-t nodes (reached after t tokens).
    """

    __slots__ = (
        "_codes",
        "_core",
        "_delta",
        "_item_leaf",
        "_layout",
        "_min_size",
        "_n_main",
        "_next_row",
        "_rows",
        "_sizes",
        "codebook_sizes",
        "depth",
        "version",
    )

    def __init__(
        self,
        codes: npt.NDArray[np.integer[Any]],
        rows: IntArray | None,
        codebook_sizes: tuple[int, ...],
        version: str,
        next_row: int,
        layout: TrieLayout,
        core: _Core | None = None,
    ) -> None:
        """Internal: use ``build``, ``subset`` or ``load``. ``rows`` None means 0..n-1."""
        self.depth = len(codebook_sizes)
        self.codebook_sizes = codebook_sizes
        self._sizes = np.array(codebook_sizes, dtype=np.int64)
        self._min_size = min(codebook_sizes)
        self.version = version
        self._codes = codes  # item codes in ascending row order
        self._rows = rows  # ascending item rows, or None for 0..n-1
        self._next_row = next_row
        self._layout = layout
        self._n_main = len(codes)
        self._delta: _Delta | None = None
        if core is None:
            all_rows = np.arange(len(codes), dtype=np.int64) if rows is None else rows
            sorted_codes, sorted_rows = _sort_items(codes, all_rows, codebook_sizes)
            core = _Core.from_sorted(sorted_codes, sorted_rows, codebook_sizes, layout)
        self._core = core
        self._item_leaf: tuple[_Core, AnyInt] | None = None  # see ``_item_leaves``

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        codes: npt.ArrayLike,
        codebook_sizes: Sequence[int] | None = None,
        version: str = "",
        *,
        layout: TrieLayout | None = None,
    ) -> SidTrie:
        """Build over ``codes`` (int, shape (N, L)); item index = row number.

        ``codebook_sizes`` defaults to ``max + 1`` of each level. Duplicate SIDs
        are allowed. Raises ``InvalidInputError`` on bad shapes or out-of-range codes.
        """
        arr = np.asarray(codes)
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise InvalidInputError(
                f"SID codes must have shape (N, L) with L >= 1, got {arr.shape}"
            )
        if codebook_sizes is None:
            if not len(arr):
                raise InvalidInputError("codebook_sizes is required when there are no codes")
            _check_integer(arr)
            sizes = tuple(int(x) + 1 for x in arr.max(axis=0))
        else:
            sizes = tuple(int(x) for x in codebook_sizes)
        if len(sizes) != arr.shape[1]:
            raise InvalidInputError(
                f"{len(sizes)} codebook sizes given for SIDs of {arr.shape[1]} levels"
            )
        if any(v < 1 for v in sizes):
            raise InvalidInputError(f"codebook sizes must be >= 1, got {list(sizes)}")
        checked = _checked_codes(arr, sizes)
        return cls(checked, None, sizes, version, len(checked), layout or TrieLayout())

    def add_items(self, codes: npt.ArrayLike) -> IntArray:
        """Add cold-start items (int (k, L)) without a full rebuild; returns their new rows.

        Node ids obtained before this call are invalid afterwards.
        """
        arr = np.asarray(codes)
        if arr.ndim != 2 or arr.shape[1] != self.depth:
            raise InvalidInputError(f"SID codes must have shape (k, {self.depth}), got {arr.shape}")
        checked = _checked_codes(arr, self.codebook_sizes)
        new_rows = np.arange(self._next_row, self._next_row + len(checked), dtype=np.int64)
        if not len(checked):
            return new_rows
        if self._rows is None and self._next_row != len(self._codes):
            self._rows = self._all_rows()  # numbering stops being 0..n-1
        if self._rows is not None:
            self._rows = np.concatenate([self._rows, new_rows])
        self._codes = np.concatenate([self._codes, checked])
        self._next_row += len(checked)
        n_delta = len(self._codes) - self._n_main
        if n_delta > max(COMPACT_MIN_ITEMS, COMPACT_FRACTION * self._n_main):
            self.compact()
        else:
            delta_codes, delta_rows = _sort_items(
                self._codes[self._n_main :], self._all_rows()[self._n_main :], self.codebook_sizes
            )
            core = _Core.from_sorted(delta_codes, delta_rows, self.codebook_sizes, self._layout)
            self._delta = _Delta.create(self._core, core)
        return new_rows

    def compact(self) -> None:
        """Merge the cold-start delta into the main trie (one full rebuild)."""
        if self._delta is None and self._n_main == len(self._codes):
            return
        sorted_codes, sorted_rows = _sort_items(self._codes, self._all_rows(), self.codebook_sizes)
        self._core = _Core.from_sorted(sorted_codes, sorted_rows, self.codebook_sizes, self._layout)
        self._n_main = len(self._codes)
        self._delta = None

    def subset(self, item_rows: npt.ArrayLike) -> SidTrie:
        """A trie over the given items only, keeping their row numbers (filters, exclusions)."""
        rows = np.asarray(item_rows)
        if rows.ndim != 1:
            raise InvalidInputError(f"item rows must be 1-D, got shape {rows.shape}")
        if len(rows):
            _check_integer(rows)
        rows = np.unique(rows.astype(np.int64, copy=False))
        if self._rows is None:
            if len(rows) and (rows[0] < 0 or rows[-1] >= len(self._codes)):
                raise InvalidInputError("item rows outside the trie's items")
            pos = rows
        else:
            pos = np.searchsorted(self._rows, rows)
            pos_c = np.minimum(pos, max(len(self._rows) - 1, 0))
            if len(rows) and (not len(self._rows) or np.any(self._rows[pos_c] != rows)):
                raise InvalidInputError("item rows outside the trie's items")
        return SidTrie(
            self._codes[pos],
            rows,
            self.codebook_sizes,
            self.version,
            self._next_row,
            self._layout,
        )

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Number of items."""
        return len(self._codes)

    @property
    def num_nodes(self) -> int:
        """Number of trie nodes, root and cold-start delta included."""
        extra = 0 if self._delta is None else int(np.sum(self._delta.to_main < 0))
        return self._core.num_nodes + extra

    def nbytes(self) -> int:
        """Bytes held by the trie's arrays (stored item codes and rows included)."""
        total = self._core.nbytes() + self._codes.nbytes
        total += 0 if self._rows is None else self._rows.nbytes
        if self._delta is not None:
            d = self._delta
            total += d.core.nbytes() + d.to_main.nbytes + d.main_keys.nbytes + d.main_vals.nbytes
        return total

    def root(self, batch: int) -> IntArray:
        """Root node ids, shape (batch,)."""
        if batch < 0:
            raise InvalidInputError(f"batch must be >= 0, got {batch}")
        return np.zeros(batch, dtype=np.int64)

    def next_mask(self, level: int, nodes: npt.ArrayLike) -> BoolArray:
        """Bool (len(nodes), codebook_sizes[level]): True where the token continues a real SID.

        ``nodes`` are depth-``level`` ids or -1 (whose rows are all False).
        Returns a fresh array.
        """
        node_arr, local = self._main_local(level, nodes)
        if local is not None:
            return self._core.mask_local(level, local)
        delta = self._delta
        assert delta is not None
        main_nodes, delta_nodes = self._split(node_arr, delta)
        out = self._core.mask(level, main_nodes)
        if np.any(delta_nodes >= 0):
            out |= delta.core.mask(level, delta_nodes)
        return out

    def flat_csr(self) -> tuple[FlatCsr, AnyInt, IntArray] | None:
        """The main trie's CSR levels and leaves (``leaf_ptr``, ``leaf_items``) for the
        compiled search loops; None while a cold-start delta exists (node ids then span two
        tries: callers take the general path)."""
        if self._delta is not None:
            return None
        core = self._core
        return core.flat, core.leaf_ptr, core.leaf_items

    def edges(self, level: int, nodes: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
        """Every edge leaving ``nodes`` (depth-``level`` ids; -1 has none) as three arrays:
        the position in ``nodes`` (ascending), the token (ascending within one node) and
        the child id. The same edges as ``np.nonzero(next_mask(...))`` + ``advance``, in
        the same order, without the dense mask: what a constrained search step needs."""
        node_arr, local = self._main_local(level, nodes)
        if local is not None:
            return self._core.edges_local(level, local)
        index, token = np.nonzero(self.next_mask(level, node_arr))
        index, token = index.astype(np.int64), token.astype(np.int64)
        return index, token, self.advance(level, node_arr[index], token)

    def advance(self, level: int, nodes: npt.ArrayLike, tokens: npt.ArrayLike) -> IntArray:
        """Child node ids after taking ``tokens`` at ``level``; -1 where that edge does not exist.

        Tokens outside the codebook are edges that do not exist.
        """
        node_arr, live_local = self._check_nodes(level, nodes, self.depth - 1)
        tok_arr = np.asarray(tokens)
        if tok_arr.shape != node_arr.shape:
            raise InvalidInputError(
                f"tokens shape {tok_arr.shape} does not match nodes shape {node_arr.shape}"
            )
        if tok_arr.dtype != np.int64:
            if tok_arr.size:
                _check_integer(tok_arr)
            tok_arr = tok_arr.astype(np.int64)  # uint64 would promote to float in index math
        delta = self._delta
        if delta is None:
            core = self._core
            if live_local is not None and _all_below(tok_arr, self.codebook_sizes[level]):
                child = core.step_local(level, live_local, tok_arr)
                return core.to_global(level + 1, child)
            return core.advance(level, node_arr, tok_arr)
        main_nodes, delta_nodes = self._split(node_arr, delta)
        main_child = self._core.advance(level, main_nodes, tok_arr)
        delta_child = delta.core.advance(level, delta_nodes, tok_arr)
        # a child missing from the main trie can only be a delta-only node
        delta_ids = np.where(delta_child >= 0, delta_child + self._core.num_nodes, -1)
        return np.where(main_child >= 0, main_child, delta_ids)

    def leaf_items(self, leaf_nodes: npt.ArrayLike) -> list[IntArray]:
        """Item rows (ascending) under each depth-L node; empty for -1."""
        nodes, _ = self._check_nodes(self.depth, leaf_nodes, self.depth)
        core, delta = self._core, self._delta
        lo = core.offsets[self.depth]
        out: list[IntArray] = []
        if delta is None:
            for node in nodes.tolist():
                out.append(core.leaf_rows(node - lo) if node >= 0 else np.zeros(0, np.int64))
            return out
        main_nodes, delta_nodes = self._split(nodes, delta)
        d_lo = delta.core.offsets[self.depth]
        for m, d in zip(main_nodes.tolist(), delta_nodes.tolist(), strict=True):
            parts = []
            if m >= 0:
                parts.append(core.leaf_rows(m - lo))
            if d >= 0:
                parts.append(delta.core.leaf_rows(d - d_lo))
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return out

    def subtree_sums(self, values: npt.ArrayLike) -> npt.NDArray[np.float64] | None:
        """(Q, num_nodes) float64: for each row of ``values`` (Q, item rows; 1-D = one row),
        the sum of the values of the items under every node, the root included (e.g. the
        prior probability mass of every SID prefix). None while a cold-start delta exists:
        its nodes are not covered (callers go without, see ``compact``)."""
        if self._delta is not None:
            return None
        arr = np.atleast_2d(np.asarray(values, dtype=np.float64))
        rows = self._all_rows()
        if arr.ndim != 2 or (len(rows) and arr.shape[1] <= int(rows[-1])):
            raise InvalidInputError(
                f"values must be (Q, >= {int(rows[-1]) + 1 if len(rows) else 0}) "
                f"over item rows, got shape {arr.shape}"
            )
        return self._core.subtree_sums(arr)

    def path_sums(
        self, rows: npt.ArrayLike, values: npt.ArrayLike
    ) -> tuple[IntArray, npt.NDArray[np.float64]] | None:
        """``subtree_sums`` of one row of values that is zero on every item but ``rows``,
        on the only nodes where it can be non-zero: (the nodes on the paths of ``rows``,
        sorted global ids; the sum of ``values`` over the given rows under each). Rows that
        are not items of this trie are skipped. Costs O(len(rows) * depth) after a first
        call that maps every item to its leaf (once per trie). None while a cold-start
        delta exists (as ``subtree_sums``)."""
        if self._delta is not None:
            return None
        row_arr = np.asarray(rows, dtype=np.int64).reshape(-1)
        val_arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if row_arr.shape != val_arr.shape:
            raise InvalidInputError(
                f"{len(row_arr)} item rows but {len(val_arr)} values for their paths"
            )
        pos = self._positions(row_arr)
        found = pos >= 0
        if not found.any():
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        core = self._core
        nodes, inverse = np.unique(self._item_leaves()[pos[found]], return_inverse=True)
        sums = np.bincount(inverse, weights=val_arr[found], minlength=len(nodes))
        out_nodes = [nodes + np.int64(core.offsets[self.depth])]
        out_sums = [sums]
        for t in range(self.depth - 1, -1, -1):  # up: a node's parent owns its CSR range
            ptr = core.ptr[t][: core.level_count(t)]
            # in ``ptr``'s dtype: a mixed-dtype search would convert (copy) all of ``ptr``
            parents = np.searchsorted(ptr, nodes.astype(ptr.dtype), side="right")
            change = np.ones(len(parents), dtype=bool)  # ``parents`` is sorted
            np.not_equal(parents[1:], parents[:-1], out=change[1:])
            first = np.flatnonzero(change)
            nodes = parents[first] - 1
            sums = np.add.reduceat(sums, first)
            out_nodes.append(nodes + np.int64(core.offsets[t]))
            out_sums.append(sums)
        return np.concatenate(out_nodes[::-1]), np.concatenate(out_sums[::-1])

    def valid_next_mask(self, prefixes: npt.ArrayLike) -> BoolArray:
        """Mask of valid next tokens after each prefix (int (B, t), 0 <= t < L).

        Same as walking ``root``/``advance`` then ``next_mask``; prefixes that
        are not in the trie (or hold out-of-codebook tokens) get all-False rows.
        """
        arr = np.asarray(prefixes)
        if arr.ndim != 2 or arr.shape[1] >= self.depth:
            raise InvalidInputError(
                f"prefixes must have shape (B, t) with t < {self.depth}, got {arr.shape}"
            )
        if arr.dtype != np.int64:
            if arr.size:
                _check_integer(arr)
            arr = arr.astype(np.int64)
        if arr.size:
            width = arr.shape[1]
            if self._delta is None and (
                _all_below(arr, self._min_size)
                or (arr.min() >= 0 and np.all(arr.max(axis=0) < self._sizes[:width]))
            ):
                # fast path: walk local indices, no -1 bookkeeping between levels
                local: npt.NDArray[np.integer[Any]] = np.zeros(arr.shape[0], dtype=np.int64)
                for t in range(width):
                    local = self._core.step_local(t, local, arr[:, t])
                return self._core.mask_local(width, local)
        nodes = self.root(arr.shape[0])
        for t in range(arr.shape[1]):
            nodes = self.advance(t, nodes, arr[:, t])
        return self.next_mask(arr.shape[1], nodes)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """Write one ``.npz`` (no pickle) with a JSON header; the delta is merged first."""
        trie = self
        if self._delta is not None or self._n_main != len(self._codes):
            trie = SidTrie(
                self._codes,
                self._rows,
                self.codebook_sizes,
                self.version,
                self._next_row,
                self._layout,
            )
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "version": trie.version,
            "depth": trie.depth,
            "codebook_sizes": list(trie.codebook_sizes),
            "n_items": len(trie),
            "next_row": trie._next_row,
            "layout": dataclasses.asdict(trie._layout),
        }
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "meta_json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "codes": trie._codes,
            "sid_order": trie._core.leaf_items,
        }
        if trie._rows is not None:
            arrays["rows"] = trie._rows
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> SidTrie:
        """Read a file written by ``save``; refuses unknown formats and inconsistent arrays."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta_json"]).decode())
                if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                    raise ArtifactIntegrityError(f"{path} is not a SID trie file")
                if meta.get("format_version") != FORMAT_VERSION:
                    raise ArtifactIntegrityError(
                        f"{path}: SID trie format version {meta.get('format_version')!r} is not "
                        f"supported (this build reads version {FORMAT_VERSION})"
                    )
                codes = data["codes"]
                order = data["sid_order"].astype(np.int64, copy=False)
                rows = data["rows"].astype(np.int64, copy=False) if "rows" in data else None
            sizes = tuple(int(x) for x in meta["codebook_sizes"])
            layout = TrieLayout(**meta["layout"])
            version, next_row = str(meta["version"]), int(meta["next_row"])
            if codes.ndim != 2 or codes.shape[1] != len(sizes) or meta["depth"] != len(sizes):
                raise ArtifactIntegrityError(f"{path}: codes {codes.shape} do not match the header")
            codes = _checked_codes(codes, sizes)
        except ArtifactIntegrityError:
            raise
        except (OSError, ValueError, KeyError, TypeError, InvalidInputError) as exc:
            raise ArtifactIntegrityError(f"cannot read SID trie {path}: {exc}") from exc
        n = len(codes)
        if len(order) != n or (rows is not None and len(rows) != n):
            raise ArtifactIntegrityError(f"{path}: array lengths disagree")
        if rows is None:
            pos = order
        else:
            if n > 1 and np.any(rows[1:] <= rows[:-1]):
                raise ArtifactIntegrityError(f"{path}: item rows are not strictly ascending")
            pos = np.minimum(np.searchsorted(rows, order), max(n - 1, 0))
            if np.any(rows[pos] != order):
                raise ArtifactIntegrityError(f"{path}: SID order names unknown rows")
        if n and (pos.min() < 0 or pos.max() >= n or np.any(np.bincount(pos, minlength=n) != 1)):
            raise ArtifactIntegrityError(f"{path}: SID order is not a permutation of the items")
        sorted_codes = codes[pos]
        if not _is_sorted(sorted_codes, order, sizes):
            raise ArtifactIntegrityError(f"{path}: SID order is not sorted")
        core = _Core.from_sorted(sorted_codes, order, sizes, layout)
        return cls(codes, rows, sizes, version, next_row, layout, core=core)

    # ------------------------------------------------------------------ helpers

    def _all_rows(self) -> IntArray:
        return np.arange(len(self._codes), dtype=np.int64) if self._rows is None else self._rows

    def _item_leaves(self) -> AnyInt:
        """The local leaf id of every item, aligned with ``_codes``; built once per core."""
        cached = self._item_leaf
        if cached is not None and cached[0] is self._core:
            return cached[1]
        core = self._core
        n_leaf = core.level_count(self.depth)
        dtype = _index_dtype(n_leaf + 1)
        per_leaf = np.diff(core.leaf_ptr[: n_leaf + 1])
        out = np.empty(len(core.leaf_items), dtype=dtype)
        out[self._positions(core.leaf_items)] = np.repeat(np.arange(n_leaf, dtype=dtype), per_leaf)
        self._item_leaf = (core, out)
        return out

    def _positions(self, rows: IntArray) -> IntArray:
        """Index of each item row in ``_codes``; -1 for rows that are not items here."""
        n = len(self._codes)
        if self._rows is None:
            return np.where((rows >= 0) & (rows < n), rows, -1)
        if not n:
            return np.full(len(rows), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._rows, rows), n - 1)
        return np.where(self._rows[pos] == rows, pos, -1)

    def _check_nodes(
        self, level: int, nodes: npt.ArrayLike, max_level: int
    ) -> tuple[IntArray, IntArray | None]:
        """Nodes as int64, checked to be -1 or depth-``level`` ids.

        The second value holds their main-trie local indices when all of them
        are live main nodes (the common case, one reduction), else None.
        """
        if not isinstance(level, int | np.integer) or not 0 <= level <= max_level:
            raise InvalidInputError(f"level must be in [0, {max_level}], got {level!r}")
        arr = np.asarray(nodes)
        if arr.ndim != 1:
            raise InvalidInputError(f"nodes must be 1-D, got shape {arr.shape}")
        if arr.dtype != np.int64:
            if arr.size:
                _check_integer(arr)
            arr = arr.astype(np.int64)
        if not arr.size:
            return arr, None
        lo, hi = self._core.offsets[level], self._core.offsets[level + 1]
        local = arr - lo
        if local.view(np.uint64).max() < hi - lo:  # negatives wrap to huge values
            return arr, local
        ok = ((arr >= lo) & (arr < hi)) | (arr == -1)
        if self._delta is not None:
            base = self._core.num_nodes
            d_lo, d_hi = self._delta.core.offsets[level], self._delta.core.offsets[level + 1]
            to_main = self._delta.to_main
            ok |= (
                (arr >= base + d_lo)
                & (arr < base + d_hi)
                & (to_main[np.clip(arr - base, 0, len(to_main) - 1)] < 0)
            )
        if not ok.all():
            raise InvalidInputError(f"node ids not at depth {level}: {arr[~ok][:5].tolist()}")
        return arr, None

    def _main_local(self, level: int, nodes: npt.ArrayLike) -> tuple[IntArray, IntArray | None]:
        """Checked depth-``level`` nodes, and their local indices when there is no cold-start
        delta (the one-trie fast path of masks and edges), else None."""
        node_arr, live_local = self._check_nodes(level, nodes, self.depth - 1)
        if self._delta is not None:
            return node_arr, None
        if live_local is None:
            live_local = self._core.to_local(level, node_arr)
        return node_arr, live_local

    def _split(self, nodes: IntArray, delta: _Delta) -> tuple[IntArray, IntArray]:
        """(main ids or -1, delta ids or -1) naming the same prefixes as ``nodes``."""
        base = self._core.num_nodes
        delta_only = nodes >= base
        main_nodes = np.where(delta_only, -1, nodes)
        delta_nodes = np.where(delta_only, nodes - base, delta.from_main(main_nodes))
        return main_nodes, delta_nodes


def _all_below(values: np.ndarray[Any, Any], bound: int) -> bool:
    """True when every value lies in [0, bound) (False for an empty array)."""
    if not values.size:
        return False
    if values.dtype == np.int64:
        return bool(values.view(np.uint64).max() < bound)
    return bool(values.min() >= 0 and values.max() < bound)


def _check_integer(arr: np.ndarray[Any, Any]) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"expected integers, got dtype {arr.dtype}")


def _checked_codes(
    arr: np.ndarray[Any, Any], codebook_sizes: tuple[int, ...]
) -> npt.NDArray[np.integer[Any]]:
    """Validate codes against the codebook sizes; return them in the compact code dtype."""
    if arr.size:  # an empty array may have any dtype (np.zeros((0, L)) is float)
        _check_integer(arr)
        low, high = arr.min(axis=0), arr.max(axis=0)
        for t, size in enumerate(codebook_sizes):
            if low[t] < 0 or high[t] >= size:
                raise InvalidInputError(
                    f"SID level {t} has codes in [{int(low[t])}, {int(high[t])}], "
                    f"outside [0, {size})"
                )
    return np.ascontiguousarray(arr, dtype=_code_dtype(codebook_sizes))


def _is_sorted(codes: AnyInt, rows: IntArray, codebook_sizes: tuple[int, ...]) -> bool:
    """True when (SID, row) pairs are in strictly ascending lexicographic order."""
    if len(codes) < 2:
        return True
    key = _sid_keys(codes, codebook_sizes)
    if key is not None:
        step = np.sign(key[1:] - key[:-1])
    else:
        diff = codes[1:].astype(np.int64) - codes[:-1].astype(np.int64)
        step = np.sign(diff[np.arange(len(diff)), np.argmax(diff != 0, axis=1)])
    return bool(np.all((step > 0) | ((step == 0) & (rows[1:] > rows[:-1]))))
