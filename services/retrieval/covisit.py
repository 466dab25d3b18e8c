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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from services.common.errors import ArtifactIntegrityError, InvalidInputError
from services.retrieval.trie import SidTrie

FORMAT_NAME = "gensearch-covisit"
#: artifact files (relative to the version directory) written by
#: ``models_export.generator.prior`` and read by the retrieval service
TABLE_FILE = "generator/covisit.npz"
SETTINGS_FILE = "generator/covisit_prior.json"


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
        if not 0.0 <= decay <= 1.0:
            raise InvalidInputError(f"decay must be in [0, 1], got {decay}")
        if last_n < 1:
            raise InvalidInputError(f"last_n must be >= 1, got {last_n}")
        m = self.matrix
        out = np.zeros((len(histories), self.num_items), dtype=np.float64)
        for b, hist in enumerate(histories):
            recent = list(hist)[-last_n:][::-1]  # most recent first
            for age, item in enumerate(recent):
                weight = decay**age
                if weight == 0 or not 0 <= item < self.num_items:
                    continue
                lo, hi = m.indptr[item], m.indptr[item + 1]
                # a CSR row holds each column once: a plain fancy-indexed add is exact
                out[b, m.indices[lo:hi]] += weight * m.data[lo:hi]
        return out


@dataclass(frozen=True, slots=True)
class CovisitPrior:
    """Co-visitation as a decoding prior (see the module docstring); ``weight`` 0 = off."""

    table: CovisitTable
    weight: float
    decay: float = 0.3
    last_n: int = 20
    smoothing: float = 0.1

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

    def distribution(self, history: Sequence[int], num_rows: int) -> npt.NDArray[np.float64] | None:
        """(num_rows,) prior over item rows: ``(1 - smoothing)`` of the normalised co-visit
        scores plus ``smoothing`` of add-one training popularity (rows the table does not
        know count as never bought). None when the history leads nowhere: the prior then
        has nothing to say and decoding goes without it."""
        if not len(history):
            return None
        cov = self.table.scores([history], self.decay, self.last_n)[0]
        total = float(cov.sum())
        if total <= 0:
            return None
        known = min(num_rows, self.table.num_items)
        out = self.smoothing * self.table.backoff(num_rows)
        out[:known] += ((1.0 - self.smoothing) / total) * cov[:known]
        return out

    def node_bonus(
        self, trie: SidTrie, history: Sequence[int], num_rows: int
    ) -> npt.NDArray[np.float32] | None:
        """(trie.num_nodes,) ``weight * log(prior mass under each node)`` for
        :class:`~services.retrieval.beam_search.SearchOptions`; None when the prior is off,
        has nothing to say, or the trie holds a cold-start delta."""
        if self.weight == 0:
            return None
        dist = self.distribution(history, num_rows)
        if dist is None:
            return None
        mass = trie.subtree_sums(dist)
        if mass is None:
            return None
        with np.errstate(divide="ignore"):  # nodes of no item (none in a built trie)
            bonus = self.weight * np.log(mass[0])
        return bonus.astype(np.float32)
