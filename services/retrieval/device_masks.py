"""The SID trie's per-step masks and node steps as array programs on the decoding device.

:func:`array_module` picks ``xp``: CuPy when it imports AND sees a CUDA device, else numpy
(the serving image never imports torch). :class:`DeviceTrie` copies, once, tables built
from the same flat CSR arrays :class:`~services.retrieval.trie.SidTrie` holds
(``SidTrie.flat_csr``) to that device:

* per level, a packed bit table (one row of ``ceil(V_t / 8)`` bytes per node, plus an
  all-zero row for the dead node): the allowed-token mask of a batch of nodes is one
  gather plus a shift-and (``(rows[:, t // 8] >> (7 - t % 8)) & 1``), computed where the
  logits are, so no mask crosses the host-device link per step;
* per level, the sorted edge keys ``parent * V_t + token``: a node step is one
  ``searchsorted`` (the child's local id is the key's position).

Node ids here are *local* to their depth (``0 .. n_t - 1``), and ``n_t`` (:meth:`dead`) is
the dead node, whose mask is all False and which has no children. The leaves' item rows
stay on the host (they are read once per search, after the last step).
"""

from __future__ import annotations

import importlib
import logging
import time
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.errors import InvalidInputError
from services.retrieval.trie import SidTrie

log = logging.getLogger(__name__)

#: an xp array (numpy or CuPy); typed loosely: CuPy has no type stubs
XpArray = Any


@cache
def _cupy_with_device() -> ModuleType | None:
    """CuPy when it is importable and at least one CUDA device is visible, else None."""
    try:
        cupy = importlib.import_module("cupy")
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # not installed, no driver, no device: all mean "use numpy"
        log.info("device arrays: numpy", extra={"reason": f"{type(exc).__name__}: {exc}"})
        return None
    if count < 1:
        log.info("device arrays: numpy", extra={"reason": "CuPy sees no CUDA device"})
        return None
    return cupy


def array_module(prefer_device: bool = True) -> ModuleType:
    """``cupy`` when ``prefer_device`` and a CUDA device is usable through it, else ``numpy``."""
    if prefer_device:
        cupy = _cupy_with_device()
        if cupy is not None:
            return cupy
    return np


def is_device_module(xp: ModuleType) -> bool:
    """True for CuPy (arrays in device memory), False for numpy."""
    return xp is not np


def to_host(array: XpArray) -> npt.NDArray[Any]:
    """A numpy copy (or the array itself when it already is one)."""
    if isinstance(array, np.ndarray):
        return array
    return np.asarray(array.get())


def synchronize(xp: ModuleType) -> None:
    """Wait for the device work queued by ``xp`` (before another library, e.g. ONNX Runtime
    on its own CUDA stream, reads what it wrote); a no-op for numpy."""
    if is_device_module(xp):
        xp.cuda.get_current_stream().synchronize()


def _edge_parents(ptr: npt.NDArray[np.integer[Any]], n_nodes: int) -> npt.NDArray[np.int64]:
    """The local parent of every edge of a CSR level (edges in child order)."""
    counts = np.diff(ptr[: n_nodes + 1])
    return np.repeat(np.arange(n_nodes, dtype=np.int64), counts)


def _packed_table(
    ptr: npt.NDArray[np.integer[Any]], tok: npt.NDArray[np.integer[Any]], n_nodes: int, size: int
) -> npt.NDArray[np.uint8]:
    """(n_nodes + 1, ceil(size / 8)) bits, token j at bit 7 - j % 8 of byte j // 8; the last
    row (the dead node) is all zero."""
    width = -(-size // 8)
    table = np.zeros((n_nodes + 1) * width, dtype=np.uint8)
    parent = _edge_parents(ptr, n_nodes)
    tokens = tok.astype(np.int64)
    np.bitwise_or.at(
        table, parent * width + (tokens >> 3), np.right_shift(128, tokens & 7).astype(np.uint8)
    )
    return table.reshape(n_nodes + 1, width)


class DeviceTrie:
    """A :class:`SidTrie`'s masks and steps, resident on ``xp``'s device (see the module
    docstring). Built from a trie without a cold-start delta; serve a new one after
    ``add_items``/``compact`` (node ids are per trie state, as in ``trie.py``)."""

    def __init__(self, trie: SidTrie, xp: ModuleType | None = None) -> None:
        flat = trie.flat_csr()
        if flat is None:
            raise InvalidInputError(
                "a trie with a cold-start delta has no single flat layout: compact it first"
            )
        csr, leaf_ptr, leaf_items = flat
        self.xp = xp if xp is not None else array_module()
        self.source = trie
        self.n_items = len(trie)
        self.depth = trie.depth
        self.codebook_sizes = tuple(int(v) for v in trie.codebook_sizes)
        self.offsets = [int(v) for v in csr.offsets]
        self.leaf_ptr = np.asarray(leaf_ptr, dtype=np.int64)
        self.leaf_items = np.asarray(leaf_items, dtype=np.int64)
        xp_ = self.xp
        self._bits: list[XpArray] = []
        self._keys: list[XpArray] = []
        self._byte: list[XpArray] = []
        self._shift: list[XpArray] = []
        for t, size in enumerate(self.codebook_sizes):
            ptr = csr.ptr[csr.ptr_start[t] : csr.ptr_start[t + 1]]
            tok = csr.tok[csr.tok_start[t] : csr.tok_start[t + 1]]
            n_nodes = self.count(t)
            self._bits.append(xp_.asarray(_packed_table(ptr, tok, n_nodes, size)))
            parent = _edge_parents(ptr, n_nodes)
            self._keys.append(xp_.asarray(parent * size + tok.astype(np.int64)))
            tokens = np.arange(size, dtype=np.int64)
            self._byte.append(xp_.asarray(tokens >> 3))
            self._shift.append(xp_.asarray((7 - (tokens & 7)).astype(np.uint8)))

    def count(self, depth: int) -> int:
        """Number of nodes at ``depth`` (also the local id of its dead node)."""
        return self.offsets[depth + 1] - self.offsets[depth]

    def dead(self, depth: int) -> int:
        """The local id of the dead node at ``depth``."""
        return self.count(depth)

    def nbytes(self) -> int:
        """Bytes of the tables held on the device."""
        tables = [*self._bits, *self._keys, *self._byte, *self._shift]
        return int(sum(int(a.nbytes) for a in tables))

    def to_local(self, depth: int, nodes: npt.ArrayLike) -> XpArray:
        """Local ids (the dead node for -1) of global depth-``depth`` node ids."""
        arr = self.xp.asarray(nodes, dtype=np.int64)
        return self.xp.where(arr < 0, self.dead(depth), arr - self.offsets[depth])

    def mask(self, level: int, local: XpArray) -> XpArray:
        """Bool (len(local), V_level): True where the token continues a real SID after the
        depth-``level`` local nodes ``local`` (on the device, a fresh array)."""
        rows = self._bits[level][local]  # (B, bytes)
        return ((rows[:, self._byte[level]] >> self._shift[level]) & 1).astype(bool)

    def advance(self, level: int, local: XpArray, tokens: XpArray) -> XpArray:
        """Depth-(level+1) local children of depth-``level`` ``local`` nodes after
        ``tokens`` (in ``[0, V_level)``); the dead node where that edge does not exist."""
        xp = self.xp
        keys = self._keys[level]
        n_child = int(keys.shape[0])
        dead = self.dead(level + 1)
        if n_child == 0:
            return xp.full(local.shape, dead, dtype=np.int64)
        query = local.astype(np.int64) * self.codebook_sizes[level] + tokens.astype(np.int64)
        pos = xp.searchsorted(keys, query)
        found = keys[xp.minimum(pos, n_child - 1)] == query
        return xp.where(found, pos, dead).astype(np.int64)

    def leaf_rows(self, leaf_local: int) -> npt.NDArray[np.int64]:
        """Item rows of one leaf (local id at depth L), on the host."""
        return self.leaf_items[self.leaf_ptr[leaf_local] : self.leaf_ptr[leaf_local + 1]]


def mask_step_seconds(trie: DeviceTrie, rows: int, repeats: int = 200, seed: int = 0) -> float:
    """Mean seconds of one decoding step's mask on ``trie``'s device: the allowed-token mask
    of ``rows`` beams (random live nodes of the deepest inner level, already on the device)
    applied to a (rows, V) float32 logits block, as the device search does each level; the
    device is synchronised before the clock stops."""
    xp = trie.xp
    level = trie.depth - 1
    rng = np.random.default_rng(seed)
    local = xp.asarray(rng.integers(0, max(trie.count(level), 1), rows).astype(np.int64))
    logits = xp.asarray(rng.standard_normal((rows, trie.codebook_sizes[level]), np.float32))
    for _ in range(3):  # warm-up: kernel compilation / caches
        xp.where(trie.mask(level, local), logits, -np.inf)
    synchronize(xp)
    start = time.perf_counter()
    for _ in range(repeats):
        xp.where(trie.mask(level, local), logits, -np.inf)
    synchronize(xp)
    return (time.perf_counter() - start) / repeats
