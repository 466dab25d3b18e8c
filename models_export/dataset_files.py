"""Which catalog and behaviour log the offline pipeline reads: one resolver for every command.

A dataset is named ``<folder>/<Stem>`` under a data directory; its files are::

    DIR/<folder>/<Stem>.item.json                    catalog (optional: without it, log only)
    DIR/<folder>/<Stem>.inter.json                   behaviour log
    DIR/<folder>/indexes/<variant>/<Stem>.index.json published semantic IDs (optional)

The data directory is ``--data-dir`` or ``$GENSEARCH_DATA_DIR`` (default ``../shared/data``),
the name ``--dataset`` or ``$GENSEARCH_DATASET`` (default ``amazon_scientific/Scientific``).
``--log FILE`` (with an optional ``--items FILE``) names the files directly instead.
A missing or unusable input raises :class:`DataInputError`, whose message is one line that
names the file and the flag or variable to set; the command line prints it and exits 2.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.artifacts import sha256_file
from services.common.config import DATA_DIR_ENV, data_dir

DATASET_ENV = "GENSEARCH_DATASET"
DEFAULT_DATASET = "amazon_scientific/Scientific"
ITEMS_SUFFIX = ".item.json"
LOG_SUFFIX = ".inter.json"
INDEX_SUFFIX = ".index.json"
NAMED_HINT = f"set {DATA_DIR_ENV} or pass --data-dir; dataset {DATASET_ENV} / --dataset"
EXPLICIT_HINT = "check --items / --log"


class DataInputError(ValueError):
    """An input file is missing, unreadable or of the wrong shape; the message is one line."""


def input_error(what: str, path: Path, hint: str) -> DataInputError:
    """The one-line error about ``path``: ``"<what>: <path> (<hint>)"``."""
    return DataInputError(f"{what}: {path} ({hint})")


@dataclass(frozen=True, slots=True)
class DatasetFiles:
    """The input files of one dataset. ``items`` is None for a log-only dataset."""

    name: str
    items: Path | None
    log: Path
    index_dir: Path
    root: Path  # what recorded paths are relative to
    hint: str = NAMED_HINT  # how the user chooses these files (ends every error message)

    @property
    def has_text(self) -> bool:
        """Whether the dataset has a catalog with item text (else recommendation mode)."""
        return self.items is not None

    def fail(self, what: str, path: Path) -> DataInputError:
        """:func:`input_error` with this dataset's hint."""
        return input_error(what, path, self.hint)

    def index_path(self, variant: str) -> Path:
        """Where a published SID index lives: ``indexes/<variant>/<Stem>.index.json``."""
        return self.index_dir / variant / f"{self.stem}{INDEX_SUFFIX}"

    def index_file(self, variant: str) -> Path:
        """:meth:`index_path`, which must exist (else :class:`DataInputError`)."""
        path = self.index_path(variant)
        if not path.is_file():
            raise self.fail(f"published index {variant!r} not found", path)
        return path

    @property
    def stem(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def check(self) -> DatasetFiles:
        """Raise :class:`DataInputError` unless the log (and the catalog, if named) exist."""
        for path in (self.log, self.items):
            if path is not None and not path.is_file():
                raise self.fail("data file not found", path)
        return self

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def fingerprint(self) -> dict[str, Any]:
        """Name, relative paths and sha256 of the inputs (goes into the manifest config)."""
        files = {"items": self.items, "log": self.log}
        return {
            "name": self.name,
            "files": {
                role: {"path": self._relative(path), "sha256": sha256_file(path)}
                for role, path in files.items()
                if path is not None
            },
        }


def dataset_name() -> str:
    """``$GENSEARCH_DATASET`` or the default dataset."""
    return os.environ.get(DATASET_ENV, "") or DEFAULT_DATASET


def named(base: Path | None = None, name: str | None = None) -> DatasetFiles:
    """The files of dataset ``name`` under ``base`` (defaults: environment, then built-in).

    The catalog is optional: a dataset folder with only ``<Stem>.inter.json`` is log only.
    """
    root = base if base is not None else data_dir()
    name = (name or dataset_name()).strip("/")
    folder, _, stem = name.rpartition("/")
    if not folder or not stem:
        raise DataInputError(
            f"dataset name {name!r} must look like <folder>/<Stem>, e.g. {DEFAULT_DATASET} "
            f"({DATASET_ENV} / --dataset)"
        )
    if not root.is_dir():
        raise DataInputError(f"data directory not found: {root} ({NAMED_HINT})")
    base_path = root / folder / stem
    items = base_path.with_name(stem + ITEMS_SUFFIX)
    files = DatasetFiles(
        name=name,
        items=items if items.is_file() else None,
        log=base_path.with_name(stem + LOG_SUFFIX),
        index_dir=root / folder / "indexes",
        root=root,
    )
    return files.check()


def explicit(log: Path, items: Path | None = None) -> DatasetFiles:
    """Files named directly: ``log`` and an optional catalog ``items``."""
    stem = log.name.removesuffix(LOG_SUFFIX).removesuffix(".json")
    files = DatasetFiles(
        name=f"{log.parent.name}/{stem}",
        items=items,
        log=log,
        index_dir=log.parent / "indexes",
        root=log.parent,
        hint=EXPLICIT_HINT,
    )
    return files.check()


def add_arguments(parser: argparse.ArgumentParser, explicit_files: bool = True) -> None:
    """``--data-dir``/``--dataset`` (and ``--items``/``--log`` when ``explicit_files``)."""
    group = parser.add_argument_group("input data")
    group.add_argument(
        "--data-dir", type=Path, default=None, help=f"data directory (default ${DATA_DIR_ENV})"
    )
    group.add_argument(
        "--dataset",
        default=None,
        metavar="FOLDER/STEM",
        help=f"dataset under the data directory (default ${DATASET_ENV} or {DEFAULT_DATASET})",
    )
    if explicit_files:
        group.add_argument("--log", type=Path, default=None, help="behaviour log file")
        group.add_argument("--items", type=Path, default=None, help="catalog file (omit: log only)")


def from_args(args: argparse.Namespace) -> DatasetFiles:
    """Resolve the dataset the command line (then the environment) names."""
    log: Path | None = getattr(args, "log", None)
    items: Path | None = getattr(args, "items", None)
    if log is not None:
        if args.dataset is not None or args.data_dir is not None:
            raise DataInputError("pass either --log/--items or --data-dir/--dataset, not both")
        return explicit(log, items)
    if items is not None:
        raise DataInputError("--items needs --log (the behaviour log is required)")
    return named(args.data_dir, args.dataset)


WANDS_FILE = Path("wands") / "query.csv"


def wands_queries(root: Path) -> list[str]:
    """The REAL WANDS query strings under ``root`` (tab-separated ``query_id, query,
    query_class``): real query text for input, load and normalisation tests."""
    path = root / WANDS_FILE
    if not path.is_file():
        raise input_error("WANDS queries not found", path, NAMED_HINT)
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["query"] for row in csv.DictReader(fh, delimiter="\t")]
