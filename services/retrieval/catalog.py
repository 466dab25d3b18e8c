"""The item catalog as serving sees it: ids ↔ rows, category paths, SIDs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq

from services.common.artifacts import ArtifactSet
from services.common.errors import ArtifactIntegrityError

CATEGORY_SEP = " > "


class Catalog:
    """Row-aligned item ids, category paths and semantic IDs of one artifact version."""

    def __init__(
        self, item_ids: Sequence[str], categories: Sequence[str], codes: np.ndarray
    ) -> None:
        self.item_ids = list(item_ids)
        self.row_of = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self.categories = np.asarray(categories, dtype=object)
        self.codes = np.asarray(codes, dtype=np.int32)
        self._lower = np.array([c.lower() for c in categories], dtype=object)
        self.rows_with_prefixes = lru_cache(maxsize=256)(self._rows_with_prefixes)

    @classmethod
    def load(cls, artifacts: ArtifactSet, codes: np.ndarray) -> Catalog:
        """Items of ``artifacts`` with ``codes`` (the SIDs the generator was trained on)."""
        table = pq.read_table(
            artifacts.path("tables/items.parquet"), columns=["item_id", "categories"]
        ).to_pydict()
        categories = [CATEGORY_SEP.join(path or []) for path in table["categories"]]
        if len(codes) != len(categories):
            raise ArtifactIntegrityError(
                f"artifact {artifacts.version}: {len(codes)} SIDs for {len(categories)} items"
            )
        return cls([str(i) for i in table["item_id"]], categories, codes)

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Iterable[str]) -> tuple[np.ndarray, int]:
        """Rows of the known ids (order kept) and how many ids were unknown."""
        rows, unknown = [], 0
        for item_id in item_ids:
            row = self.row_of.get(item_id)
            if row is None:
                unknown += 1
            else:
                rows.append(row)
        return np.asarray(rows, dtype=np.int64), unknown

    def _rows_with_prefixes(self, prefixes: tuple[str, ...]) -> np.ndarray:
        """Rows whose category path starts with one of ``prefixes`` (case-insensitive)."""
        wanted = tuple(p.strip().lower() for p in prefixes)
        hits = [
            row
            for row, path in enumerate(self._lower)
            if any(path == p or path.startswith(p + CATEGORY_SEP.lower()) for p in wanted)
        ]
        return np.asarray(hits, dtype=np.int64)
