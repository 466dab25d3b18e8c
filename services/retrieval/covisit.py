"""Item-to-item co-visitation ("bought A, then bought B"), counted from TRAINING histories,
and its use as a prior fused into constrained decoding.

The table is the classic item-based candidate generator (Linden, Smith & York, IEEE Internet
Computing 2003): for every training history and every ordered pair of positions i < j,
item j gains ``1 / (j - i)`` in the row of item i. A request's scores are the rows of its
last ``last_n`` history items, the most recent weighted 1, the one before ``decay``, then
``decay**2``, and so on.

:class:`CovisitPrior` turns those scores into a distribution over items (mixed with
training popularity, ``smoothing``) and then into a bonus per SID-trie node: ``weight *
log(prior mass under the node)``. Beam search adds the bonus of the node an edge leads to
onto that edge's logit before it renormalises over the valid tokens, so each step is the
product of the generator's and the prior's next-token distributions (``weight`` the
prior's exponent): shallow fusion, as a language model is fused into a speech decoder
(Gulcehre et al. 2015), here with a count model over SID prefixes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval.beam_search import SparseNodeBonus
from services.retrieval.trie import SidTrie

FORMAT_NAME = "gensearch-covisit"
#: artifact files (relative to the version directory) written by
#: ``models_export.generator.prior`` and read by the retrieval service
TABLE_FILE = "generator/covisit.npz"
SETTINGS_FILE = "generator/covisit_prior.json"
#: how many (trie, catalog size) back-off bonuses a prior keeps (the full trie and the
#: category sub-tries in use)
BASE_CACHE_SIZE = 16

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: a trie, the back-off mass under each of its nodes and that mass's bonus
_Backoff = tuple[SidTrie, FloatArray, npt.NDArray[np.float32]]


def item_counts(histories: Sequence[npt.ArrayLike], num_items: int) -> npt.NDArray[np.float64]:
    """(N,) how often each item row occurs in ``histories`` (training popularity)."""
    counts = np.zeros(num_items, dtype=np.float64)
    for hist in histories:
        np.add.at(counts, np.asarray(hist, dtype=np.int64), 1.0)
    return counts


def covisit_matrix(
    histories: Sequence[npt.ArrayLike], num_items: int, window: int | None = None
) -> sp.csr_matrix:
    """(N, N) forward co-visitation counts: row a, column b += 1/(j - i) for a at i, b at j > i
    (pairs further apart than ``window`` positions are skipped when it is given)."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for hist in histories:
        h = np.asarray(hist, dtype=np.int64)
        n = len(h)
        if n < 2:
            continue
        i, j = np.triu_indices(n, k=1)
        gap = j - i
        if window is not None:
            keep = gap <= window
            i, j, gap = i[keep], j[keep], gap[keep]
        rows.append(h[i])
        cols.append(h[j])
        vals.append(1.0 / gap)
    if not rows:
        return sp.csr_matrix((num_items, num_items), dtype=np.float64)
    m = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(num_items, num_items),
        dtype=np.float64,
    )
    return m.tocsr()  # duplicate (a, b) entries are summed


class CovisitTable:
    """Forward co-visitation counts and training popularity over item rows 0..N-1."""

    def __init__(self, matrix: sp.csr_matrix, popularity: npt.ArrayLike) -> None:
        pop = np.asarray(popularity, dtype=np.float64)
        if matrix.shape != (len(pop), len(pop)):
            raise InvalidInputError(
                f"co-visit matrix {matrix.shape} does not match {len(pop)} popularity counts"
            )
        self.matrix = matrix.tocsr()
        self.popularity = pop
        self._backoff: dict[int, npt.NDArray[np.float64]] = {}

    def backoff(self, num_rows: int) -> npt.NDArray[np.float64]:
        """(num_rows,) add-one training popularity, normalised (rows the table does not know
        count as never bought); cached per size."""
        cached = self._backoff.get(num_rows)
        if cached is None:
            known = min(num_rows, self.num_items)
            cached = np.ones(num_rows, dtype=np.float64)
            cached[:known] += self.popularity[:known]
            cached /= cached.sum()
            self._backoff = {num_rows: cached}  # one size at a time: the catalog's
        return cached

    @property
    def num_items(self) -> int:
        return len(self.popularity)

    @classmethod
    def from_histories(
        cls, histories: Sequence[npt.ArrayLike], num_items: int, window: int | None = None
    ) -> CovisitTable:
        """Count pairs and item frequencies in ``histories`` (pass training histories only)."""
        return cls(covisit_matrix(histories, num_items, window), item_counts(histories, num_items))

    def save(self, path: Path) -> None:
        """One ``.npz`` (no pickles): the CSR arrays and the popularity counts."""
        m = self.matrix
        np.savez(
            path,
            format_name=np.asarray(FORMAT_NAME),
            data=m.data,
            indices=m.indices,
            indptr=m.indptr,
            popularity=self.popularity,
        )

    @classmethod
    def load(cls, path: Path) -> CovisitTable:
        with np.load(path, allow_pickle=False) as z:
            if "format_name" not in z or str(z["format_name"]) != FORMAT_NAME:
                raise ArtifactIntegrityError(f"{path}: not a {FORMAT_NAME} file")
            pop = z["popularity"]
            n = len(pop)
            try:
                matrix = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(n, n))
            except ValueError as exc:
                raise ArtifactIntegrityError(f"{path}: inconsistent CSR arrays: {exc}") from exc
        return cls(matrix, pop)

    def scores(
        self, histories: Sequence[Sequence[int]], decay: float, last_n: int
    ) -> npt.NDArray[np.float64]:
        """(B, N): the recency-weighted sum of the rows of each history's last ``last_n``
        items (rows outside the table are ignored)."""
        _check_recency(decay, last_n)
        out = np.zeros((len(histories), self.num_items), dtype=np.float64)
        for b, hist in enumerate(histories):
            items, values = self.sparse_scores(hist, decay, last_n)
            out[b, items] = values
        return out

    def sparse_scores(
        self, history: Sequence[int], decay: float, last_n: int
    ) -> tuple[IntArray, FloatArray]:
        """One history's row of :meth:`scores` as (item rows with co-visits, ascending;
        their scores): work proportional to the co-visits of its last ``last_n`` items."""
        _check_recency(decay, last_n)
        m = self.matrix
        recent = np.asarray(list(history)[-last_n:][::-1], dtype=np.int64)  # most recent first
        weights = np.asarray([decay**age for age in range(len(recent))], dtype=np.float64)
        keep = (weights > 0) & (recent >= 0) & (recent < self.num_items)
        recent, weights = recent[keep], weights[keep]
        starts = m.indptr[recent]
        counts = m.indptr[recent + 1] - starts
        total = int(counts.sum())
        if not total:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        # every entry of those rows, row by row: ranges starts[i] .. starts[i] + counts[i]
        shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        entry = shift + np.arange(total)
        items, inverse = np.unique(m.indices[entry], return_inverse=True)
        vals = np.repeat(weights, counts) * m.data[entry]
        # bincount adds in input order from 0, as ``+=`` row by row would
        summed = np.bincount(inverse, weights=vals, minlength=len(items))
        return items.astype(np.int64), summed.astype(np.float64, copy=False)


def _check_recency(decay: float, last_n: int) -> None:
    if not 0.0 <= decay <= 1.0:
        raise InvalidInputError(f"decay must be in [0, 1], got {decay}")
    if last_n < 1:
        raise InvalidInputError(f"last_n must be >= 1, got {last_n}")


@dataclass(frozen=True, slots=True)
class CovisitPrior:
    """Co-visitation as a decoding prior (see the module docstring); ``weight`` 0 = off."""

    table: CovisitTable
    weight: float
    decay: float = 0.3
    last_n: int = 20
    smoothing: float = 0.1
    # (id(trie), len(trie), num_rows) -> (trie, back-off mass, its bonus), see ``_backoff``
    _bases: dict[tuple[int, int, int], _Backoff] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _bases_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise InvalidInputError(f"prior weight must be >= 0, got {self.weight}")
        if not 0.0 < self.smoothing <= 1.0:
            raise InvalidInputError(f"smoothing must be in (0, 1], got {self.smoothing}")

    def settings(self) -> dict[str, float | int]:
        """Everything but the table, for ``SETTINGS_FILE``."""
        return {
            "weight": self.weight,
            "decay": self.decay,
            "last_n": self.last_n,
            "smoothing": self.smoothing,
        }

    @classmethod
    def from_files(cls, table_path: Path, settings_path: Path) -> CovisitPrior:
        """The table and ``{"weight", "decay", "last_n", "smoothing", ...}`` (extra keys, such
        as the validation grid, are ignored)."""
        try:
            raw = json.loads(settings_path.read_text())
            return cls(
                CovisitTable.load(table_path),
                weight=float(raw["weight"]),
                decay=float(raw["decay"]),
                last_n=int(raw["last_n"]),
                smoothing=float(raw["smoothing"]),
            )
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise ArtifactIntegrityError(f"{settings_path}: bad prior settings ({exc})") from exc

    def _covisit_mass(
        self, history: Sequence[int], num_rows: int
    ) -> tuple[IntArray, FloatArray] | None:
        """The co-visit part of :meth:`distribution`: (item rows, ``(1 - smoothing)`` of
        their normalised scores); None when the history leads nowhere."""
        if not len(history):
            return None
        items, cov = self.table.sparse_scores(history, self.decay, self.last_n)
        total = float(cov.sum())
        if total <= 0:
            return None
        known = items < num_rows
        return items[known], ((1.0 - self.smoothing) / total) * cov[known]

    def distribution(self, history: Sequence[int], num_rows: int) -> npt.NDArray[np.float64] | None:
        """(num_rows,) prior over item rows: ``(1 - smoothing)`` of the normalised co-visit
        scores plus ``smoothing`` of add-one training popularity (rows the table does not
        know count as never bought). None when the history leads nowhere: the prior then
        has nothing to say and decoding goes without it."""
        covisits = self._covisit_mass(history, num_rows)
        if covisits is None:
            return None
        items, mass = covisits
        out = self.smoothing * self.table.backoff(num_rows)
        out[items] += mass
        return out

    def _bonus(self, mass: FloatArray) -> npt.NDArray[np.float32]:
        """``weight * log(mass)`` as float32."""
        with np.errstate(divide="ignore"):  # nodes of no item (none in a built trie)
            bonus = self.weight * np.log(mass)
        return bonus.astype(np.float32)

    def dense_node_bonus(
        self, trie: SidTrie, history: Sequence[int], num_rows: int
    ) -> npt.NDArray[np.float32] | None:
        """(trie.num_nodes,) ``weight * log(prior mass under each node)``, from the whole
        distribution: O(catalog) per request. The reference for :meth:`node_bonus`; None
        when the prior is off, has nothing to say, or the trie holds a cold-start delta."""
        if self.weight == 0:
            return None
        dist = self.distribution(history, num_rows)
        if dist is None:
            return None
        mass = trie.subtree_sums(dist)
        return None if mass is None else self._bonus(mass[0])

    def node_bonus(
        self, trie: SidTrie, history: Sequence[int], num_rows: int
    ) -> SparseNodeBonus | None:
        """:meth:`dense_node_bonus` as the search reads it per request, in work proportional
        to the co-visited items: a node with no co-visited item under it holds back-off
        mass only, whose bonus is computed once per trie (``_backoff``); the nodes on the
        co-visited items' paths add their co-visit mass to it. The values are the dense
        ones but for float64 rounding of the inner nodes' sums (summed in another order)."""
        if self.weight == 0:
            return None
        covisits = self._covisit_mass(history, num_rows)
        if covisits is None:
            return None
        backoff = self._backoff(trie, num_rows)
        paths = trie.path_sums(*covisits)
        if backoff is None or paths is None:
            return None
        base_mass, base_bonus = backoff
        nodes, mass = paths
        return SparseNodeBonus(base_bonus, nodes, self._bonus(base_mass[nodes] + mass))

    def _backoff(
        self, trie: SidTrie, num_rows: int
    ) -> tuple[FloatArray, npt.NDArray[np.float32]] | None:
        """(num_nodes,) the back-off mass ``smoothing * popularity`` under every node of
        ``trie`` and its bonus, cached per (trie, catalog size); None with a cold-start
        delta. A trie changes only by ``add_items``, which grows ``len(trie)``: part of
        the key, so a grown trie is never served a stale entry."""
        key = (id(trie), len(trie), num_rows)
        with self._bases_lock:
            hit = self._bases.get(key)
        if hit is not None and hit[0] is trie:
            return hit[1], hit[2]
        mass = trie.subtree_sums(self.smoothing * self.table.backoff(num_rows))
        if mass is None:
            return None
        base_mass = mass[0]
        base_bonus = self._bonus(base_mass)
        base_mass.flags.writeable = False
        base_bonus.flags.writeable = False
        with self._bases_lock:
            while len(self._bases) >= BASE_CACHE_SIZE:
                del self._bases[next(iter(self._bases))]  # the oldest
            self._bases[key] = (trie, base_mass, base_bonus)
        return base_mass, base_bonus
