"""Catalog and behaviour-log ingest: validation, normalised tables, leave-one-out splits.

Every record that cannot be used is named in an :class:`IngestReport` with the
reason and the action taken (``skipped`` or ``error``). Nothing is dropped
silently: either the build stops (``on_error="raise"``) or the skip is counted.
"""

from __future__ import annotations

import argparse
import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from models_export import dataset_files
from models_export.dataset_files import DataInputError, DatasetFiles

MIN_INTERACTIONS = 3  # one training item + validation target + test target

OnError = Literal["skip", "raise"]

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("description", pa.string()),
        ("categories", pa.list_(pa.string())),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("train_history", pa.list_(pa.string())),
        ("valid_target", pa.string()),
        ("test_target", pa.string()),
    ]
)


class IngestError(ValueError):
    """Raised when the input is unusable or has bad records and ``on_error="raise"``."""

    def __init__(self, message: str, report: IngestReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True, slots=True)
class Issue:
    """One offending record: where it is, what is wrong, what was done about it."""

    source: str  # "items" | "log"
    record: str  # item id, or "user <id>" / "user <id>[pos]" for the log
    field: str
    reason: str
    action: str  # "skipped" (record left out) | "interaction skipped" | "user skipped"


@dataclass(slots=True)
class IngestReport:
    """Counts and every offending record of one ingest run."""

    items_in: int = 0
    items_out: int = 0
    items_skipped: int = 0
    users_in: int = 0
    users_out: int = 0
    users_skipped: int = 0
    interactions_in: int = 0
    interactions_out: int = 0
    interactions_skipped: int = 0
    item_ids_coerced_from_int: int = 0
    items_without_brand: int = 0
    items_without_description: int = 0
    items_without_categories: int = 0
    issues: list[Issue] = field(default_factory=list)

    def add(self, source: str, record: str, field_name: str, reason: str, action: str) -> None:
        self.issues.append(Issue(source, record, field_name, reason, action))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["issue_count"] = len(self.issues)
        return data

    def summary(self) -> str:
        return (
            f"items {self.items_out}/{self.items_in} kept ({self.items_skipped} skipped), "
            f"users {self.users_out}/{self.users_in} kept ({self.users_skipped} skipped), "
            f"interactions {self.interactions_out}/{self.interactions_in} kept "
            f"({self.interactions_skipped} skipped), {len(self.issues)} issues"
        )


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str
    brand: str
    description: str
    categories: list[str]


@dataclass(frozen=True, slots=True)
class UserSplit:
    """Leave-one-out split of one user's chronological history."""

    user_id: str
    train_history: list[str]
    valid_target: str
    test_target: str


@dataclass(slots=True)
class IngestResult:
    items: list[Item]
    users: list[UserSplit]
    report: IngestReport


def _pairs_with_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook that keeps duplicate keys visible (json.load keeps only the last)."""
    out: dict[str, Any] = {}
    dups: list[tuple[str, Any]] = []
    for key, value in pairs:
        if key in out:
            dups.append((key, value))
        else:
            out[key] = value
    if dups:
        out[_DUP_KEY] = dups
    return out


_DUP_KEY = "\x00duplicates"


def _read_object(path: Path, what: str, hint: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`DataInputError` (one line) if it is not one."""
    try:
        with path.open("rb") as handle:
            raw = json.load(handle, object_pairs_hook=_pairs_with_duplicates)
    except FileNotFoundError:
        raise dataset_files.input_error("data file not found", path, hint) from None
    except json.JSONDecodeError as exc:
        raise DataInputError(
            f"data file is not valid JSON: {path} (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DataInputError(f"data file cannot be read: {path} ({reason})") from None
    if not isinstance(raw, dict):
        raise DataInputError(
            f"data file has the wrong shape: {path} (expected a JSON object of {what}, "
            f"got {type(raw).__name__})"
        )
    return raw


def _clean_text(value: str) -> str:
    """Unescape HTML entities and collapse whitespace."""
    return " ".join(html.unescape(value).split())


def _optional_text(
    raw: dict[str, Any], name: str, item_id: str, report: IngestReport
) -> str | None:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        report.add("items", item_id, name, f"expected a string, got {type(value).__name__}", "")
        return None
    return _clean_text(value)


def _categories(raw: dict[str, Any], item_id: str, report: IngestReport) -> list[str] | None:
    value = raw.get("categories")
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = value
    else:
        report.add(
            "items",
            item_id,
            "categories",
            f"expected a comma-separated string or list of strings, got {type(value).__name__}",
            "",
        )
        return None
    return [c for c in (_clean_text(p) for p in parts) if c]


def parse_items(raw: Any, report: IngestReport, on_error: OnError = "skip") -> list[Item]:
    """Validate the catalog object ``{item_id: {title, description, brand, categories}}``."""
    if not isinstance(raw, dict):
        raise IngestError(f"catalog: expected a JSON object of items, got {type(raw).__name__}")
    duplicates: list[tuple[str, Any]] = raw.pop(_DUP_KEY, [])
    report.items_in = len(raw) + len(duplicates)
    dup_ids = {key for key, _ in duplicates}
    for key, _ in duplicates:
        report.add("items", key, "item_id", "duplicate item id", "skipped (every copy)")

    items: list[Item] = []
    seen_stripped: dict[str, str] = {}
    for item_id, record in raw.items():
        before = len(report.issues)
        if item_id in dup_ids:
            report.add("items", item_id, "item_id", "duplicate item id", "skipped (every copy)")
            continue
        if not item_id.strip():
            report.add("items", repr(item_id), "item_id", "empty item id", "skipped")
            continue
        if not isinstance(record, dict):
            report.add(
                "items", item_id, "*", f"expected an object, got {type(record).__name__}", ""
            )
        else:
            for name, _ in record.pop(_DUP_KEY, []):
                report.add("items", item_id, name, "field given more than once", "")
            title = record.get("title")
            if not isinstance(title, str):
                kind = (
                    "missing" if title is None else f"expected a string, got {type(title).__name__}"
                )
                report.add("items", item_id, "title", kind, "")
            elif not _clean_text(title):
                report.add("items", item_id, "title", "empty title", "")
            brand = _optional_text(record, "brand", item_id, report)
            description = _optional_text(record, "description", item_id, report)
            categories = _categories(record, item_id, report)
        key = item_id.strip()
        if len(report.issues) == before and key in seen_stripped:
            report.add(
                "items",
                item_id,
                "item_id",
                f"duplicate of item id {seen_stripped[key]!r} after stripping whitespace",
                "",
            )
        if len(report.issues) > before:
            _mark_skipped(report, before)
            continue
        assert isinstance(record, dict) and isinstance(title, str)
        assert brand is not None and description is not None and categories is not None
        seen_stripped[key] = item_id
        report.items_without_brand += not brand
        report.items_without_description += not description
        report.items_without_categories += not categories
        items.append(Item(key, _clean_text(title), brand, description, categories))

    report.items_out = len(items)
    report.items_skipped = report.items_in - report.items_out
    if report.items_skipped and on_error == "raise":
        raise IngestError(f"catalog: {report.items_skipped} bad item records", report)
    return items


def _mark_skipped(report: IngestReport, start: int) -> None:
    for i in range(start, len(report.issues)):
        issue = report.issues[i]
        if not issue.action:
            report.issues[i] = Issue(
                issue.source, issue.record, issue.field, issue.reason, "skipped"
            )


def _item_ref(value: Any) -> str | None:
    """An interaction's item id as a string; ints are accepted (the public log uses them)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def parse_log(
    raw: Any,
    known_items: set[str],
    skipped_items: set[str],
    report: IngestReport,
    on_error: OnError = "skip",
) -> list[UserSplit]:
    """Validate ``{user_id: [item_id, ...]}`` (oldest first) and split it leave-one-out."""
    if not isinstance(raw, dict):
        raise IngestError(f"log: expected a JSON object of users, got {type(raw).__name__}")
    duplicates: list[tuple[str, Any]] = raw.pop(_DUP_KEY, [])
    report.users_in = len(raw) + len(duplicates)
    dup_users = {key for key, _ in duplicates}
    for key, value in duplicates:
        n = len(value) if isinstance(value, list) else 0
        report.interactions_in += n
        report.interactions_skipped += n
        report.add("log", f"user {key}", "user_id", "duplicate user id", "user skipped")

    users: list[UserSplit] = []
    for user_id, history in raw.items():
        if not isinstance(history, list):
            report.add(
                "log",
                f"user {user_id}",
                "history",
                f"expected a list of item ids, got {type(history).__name__}",
                "user skipped",
            )
            continue
        report.interactions_in += len(history)
        if user_id in dup_users:
            report.interactions_skipped += len(history)
            report.add("log", f"user {user_id}", "user_id", "duplicate user id", "user skipped")
            continue
        kept: list[str] = []
        for pos, value in enumerate(history):
            ref = _item_ref(value)
            where = f"user {user_id}[{pos}]"
            if ref is None:
                reason = f"item id must be a string or int, got {type(value).__name__} {value!r}"
            elif ref in skipped_items:
                reason = f"item {ref!r} was skipped in the catalog"
            elif ref not in known_items:
                reason = f"unknown item id {ref!r}"
            else:
                if not isinstance(value, str):
                    report.item_ids_coerced_from_int += 1
                kept.append(ref)
                continue
            report.add("log", where, "item_id", reason, "interaction skipped")
            report.interactions_skipped += 1
        if len(kept) < MIN_INTERACTIONS:
            report.add(
                "log",
                f"user {user_id}",
                "history",
                f"{len(kept)} usable interactions, leave-one-out needs {MIN_INTERACTIONS}",
                "user skipped",
            )
            report.interactions_skipped += len(kept)
            continue
        report.interactions_out += len(kept)
        users.append(leave_one_out(user_id, kept))

    report.users_out = len(users)
    report.users_skipped = report.users_in - report.users_out
    if on_error == "raise" and (report.users_skipped or report.interactions_skipped):
        raise IngestError(
            f"log: {report.users_skipped} users and {report.interactions_skipped} "
            "interactions unusable",
            report,
        )
    return users


def leave_one_out(user_id: str, history: Sequence[str]) -> UserSplit:
    """Last item = test target, second-to-last = validation target, the rest = training."""
    if len(history) < MIN_INTERACTIONS:
        raise ValueError(
            f"user {user_id}: need {MIN_INTERACTIONS} interactions, have {len(history)}"
        )
    return UserSplit(user_id, list(history[:-2]), history[-2], history[-1])


def items_from_log(raw_log: dict[str, Any], report: IngestReport) -> list[Item]:
    """A catalog without text for a log-only dataset: every item id the log mentions, in
    order of first appearance (bad ids are left to :func:`parse_log` to report)."""
    seen: dict[str, None] = {}
    for user_id, history in raw_log.items():
        if user_id != _DUP_KEY and isinstance(history, list):
            seen.update((ref, None) for ref in map(_item_ref, history) if ref)
    items = [Item(item_id, "", "", "", []) for item_id in seen]
    report.items_in = report.items_out = len(items)
    report.items_without_brand = report.items_without_description = len(items)
    report.items_without_categories = len(items)
    return items


def ingest(
    items_path: Path | None,
    log_path: Path,
    on_error: OnError = "skip",
    hint: str = dataset_files.NAMED_HINT,
) -> IngestResult:
    """Load, validate and normalise the catalog and the behaviour log.

    Without ``items_path`` (a log-only dataset) the items are the ids the log mentions,
    without text. ``hint`` ends the message of a missing file (which flag to set)."""
    report = IngestReport()
    raw_log = _read_object(log_path, "users", hint)
    if items_path is None:
        items = items_from_log(raw_log, report)
    else:
        items = parse_items(_read_object(items_path, "items", hint), report, on_error)
    known = {item.item_id for item in items}
    skipped = {
        str(issue.record).strip() for issue in report.issues if issue.source == "items"
    } - known
    users = parse_log(raw_log, known, skipped, report, on_error)
    return IngestResult(items, users, report)


def ingest_dataset(files: DatasetFiles, on_error: OnError = "skip") -> IngestResult:
    """Ingest one resolved dataset (see :mod:`models_export.dataset_files`)."""
    return ingest(files.items, files.log, on_error, files.hint)


def items_table(items: Sequence[Item]) -> pa.Table:
    return pa.table(
        {
            "item_id": [i.item_id for i in items],
            "title": [i.title for i in items],
            "brand": [i.brand for i in items],
            "description": [i.description for i in items],
            "categories": [i.categories for i in items],
        },
        schema=ITEMS_SCHEMA,
    )


def users_table(users: Sequence[UserSplit]) -> pa.Table:
    return pa.table(
        {
            "user_id": [u.user_id for u in users],
            "train_history": [u.train_history for u in users],
            "valid_target": [u.valid_target for u in users],
            "test_target": [u.test_target for u in users],
        },
        schema=USERS_SCHEMA,
    )


def write_tables(result: IngestResult, tables_dir: Path) -> None:
    """Write items.parquet, users.parquet and ingest_report.json into ``tables_dir``."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(items_table(result.items), tables_dir / "items.parquet")
    pq.write_table(users_table(result.users), tables_dir / "users.parquet")
    (tables_dir / "ingest_report.json").write_text(
        json.dumps(result.report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    )


def read_items(tables_dir: Path) -> list[Item]:
    """Items back from ``items.parquet`` (row order = item index)."""
    rows = pq.read_table(tables_dir / "items.parquet").to_pylist()
    return [Item(**row) for row in rows]


def read_users(tables_dir: Path) -> list[UserSplit]:
    rows = pq.read_table(tables_dir / "users.parquet").to_pylist()
    return [UserSplit(**row) for row in rows]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m models_export ingest``."""
    dataset_files.add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="directory for the tables")
    parser.add_argument("--strict", action="store_true", help="fail on any bad record")


def run(args: argparse.Namespace) -> int:
    files = dataset_files.from_args(args)
    try:
        result = ingest_dataset(files, "raise" if args.strict else "skip")
    except IngestError as exc:
        print(f"ingest failed: {exc}")
        if exc.report is not None:
            for issue in exc.report.issues[:50]:
                print(f"  {issue.source} {issue.record} {issue.field}: {issue.reason}")
        return 1
    write_tables(result, args.out)
    print(f"ingest {files.name}: {result.report.summary()} -> {args.out}")
    return 0
