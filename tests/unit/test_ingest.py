"""Ingest validation on small bad fixtures, and the leave-one-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from models_export.dataset_files import DataInputError
from models_export.ingest import (
    IngestError,
    Issue,
    ingest,
    leave_one_out,
    read_items,
    read_users,
    write_tables,
)


def _item(title: Any = "Widget", **extra: Any) -> dict[str, Any]:
    record = {"title": title, "description": "d", "brand": "b", "categories": "Root,Sub"}
    record.update(extra)
    return record


def _write(tmp_path: Path, items_text: str, log: dict[str, Any]) -> tuple[Path, Path]:
    items_path = tmp_path / "items.json"
    log_path = tmp_path / "log.json"
    items_path.write_text(items_text)
    log_path.write_text(json.dumps(log))
    return items_path, log_path


def _issues_for(issues: list[Issue], record: str) -> list[Issue]:
    return [i for i in issues if i.record == record]


@pytest.fixture
def bad_files(tmp_path: Path) -> tuple[Path, Path]:
    good = {str(i): _item(f"Item {i}") for i in range(6)}
    body = json.dumps(good)[1:-1]
    # Raw text so the duplicate key survives: json.dumps of a dict cannot express it.
    items_text = (
        "{"
        + body
        + ', "dup": '
        + json.dumps(_item("first copy"))
        + ', "dup": '
        + json.dumps(_item("second copy"))
        + ', "empty": '
        + json.dumps(_item("   "))
        + ', "numtitle": '
        + json.dumps(_item(42))
        + ', "badcats": '
        + json.dumps(_item("ok", categories=7))
        + ', "nobrand": '
        + json.dumps({"title": "No brand", "categories": "Root"})
        + "}"
    )
    log = {
        "u1": [0, 1, 2, 3],  # ints, as in the public log
        "u2": ["0", "1", "missing-item", "2", "3"],
        "u3": [0, "empty", 1, 2.5, 2],  # skipped item, wrong type
        "u4": [0, 1],  # too short for leave-one-out
        "u5": "not a list",
        "u6": ["nobrand", "4", "5"],
    }
    return _write(tmp_path, items_text, log)


def test_bad_items_are_named_and_counted(bad_files: tuple[Path, Path]) -> None:
    result = ingest(*bad_files)
    report = result.report
    ids = [i.item_id for i in result.items]
    assert ids == ["0", "1", "2", "3", "4", "5", "nobrand"]
    assert report.items_in == 12  # 6 good + 2 copies of dup + empty + numtitle + badcats + nobrand
    assert report.items_out == 7
    assert report.items_skipped == 5
    dup = _issues_for(report.issues, "dup")
    assert dup and all(i.reason == "duplicate item id" for i in dup)
    (empty,) = _issues_for(report.issues, "empty")
    assert (empty.field, empty.reason, empty.action) == ("title", "empty title", "skipped")
    (num,) = _issues_for(report.issues, "numtitle")
    assert num.field == "title" and "int" in num.reason and num.action == "skipped"
    (cats,) = _issues_for(report.issues, "badcats")
    assert cats.field == "categories" and cats.action == "skipped"
    nobrand = result.items[-1]
    assert nobrand.brand == "" and nobrand.description == "" and nobrand.categories == ["Root"]
    assert report.items_without_brand == 1


def test_bad_log_records_are_named_and_counted(bad_files: tuple[Path, Path]) -> None:
    report = ingest(*bad_files).report
    (unknown,) = _issues_for(report.issues, "user u2[2]")
    assert unknown.reason == "unknown item id 'missing-item'"
    assert unknown.action == "interaction skipped"
    (skipped_item,) = _issues_for(report.issues, "user u3[1]")
    assert "skipped in the catalog" in skipped_item.reason
    (wrong_type,) = _issues_for(report.issues, "user u3[3]")
    assert "float" in wrong_type.reason
    (short,) = _issues_for(report.issues, "user u4")
    assert short.action == "user skipped" and "2 usable" in short.reason
    (not_list,) = _issues_for(report.issues, "user u5")
    assert not_list.action == "user skipped"
    assert report.users_in == 6 and report.users_out == 4 and report.users_skipped == 2
    # u2: 1 unknown; u3: 2 bad; u4: its 2 usable ones (user dropped).
    assert report.interactions_skipped == 1 + 2 + 2
    assert report.interactions_in == 4 + 5 + 5 + 2 + 3
    assert report.interactions_out == report.interactions_in - report.interactions_skipped
    assert report.item_ids_coerced_from_int > 0
    assert len(report.to_dict()["issues"]) == report.to_dict()["issue_count"]


def test_strict_mode_raises_with_report(bad_files: tuple[Path, Path]) -> None:
    with pytest.raises(IngestError) as err:
        ingest(*bad_files, on_error="raise")
    assert err.value.report is not None
    assert any(i.record == "empty" for i in err.value.report.issues)


def test_duplicate_field_and_html_are_handled(tmp_path: Path) -> None:
    items_text = (
        '{"a": {"title": "A &amp; B  tool", "categories": "Root,Tools &amp; Parts"},'
        ' "b": {"title": "x", "title": "y", "categories": "Root"}}'
    )
    result = ingest(*_write(tmp_path, items_text, {"u": ["a", "a", "a"]}))
    assert [i.item_id for i in result.items] == ["a"]
    assert result.items[0].title == "A & B tool"
    assert result.items[0].categories == ["Root", "Tools & Parts"]
    (dup_field,) = _issues_for(result.report.issues, "b")
    assert dup_field.field == "title" and "more than once" in dup_field.reason


def test_unreadable_input_is_a_one_line_data_input_error(tmp_path: Path) -> None:
    items_path, log_path = _write(tmp_path, "[1, 2]", {})
    with pytest.raises(DataInputError, match="expected a JSON object of items, got list"):
        ingest(items_path, log_path)
    items_path.write_text("{not json")
    with pytest.raises(DataInputError, match=r"not valid JSON: .*items.json \(line 1 column 2"):
        ingest(items_path, log_path)
    with pytest.raises(DataInputError, match=r"data file not found: .*nowhere\.json"):
        ingest(items_path, tmp_path / "nowhere.json")


def test_log_only_ingest_takes_the_items_from_the_log(tmp_path: Path) -> None:
    _, log_path = _write(tmp_path, "{}", {"u1": [3, "a", 3, 7], "u2": ["a", 9, None, "b"]})
    result = ingest(None, log_path)
    assert [i.item_id for i in result.items] == ["3", "a", "7", "9", "b"]
    assert all(not (i.title or i.brand or i.description or i.categories) for i in result.items)
    assert [u.user_id for u in result.users] == ["u1", "u2"]
    assert result.users[0].test_target == "7" and result.users[1].valid_target == "9"
    report = result.report
    assert report.items_in == report.items_out == 5 and report.items_without_description == 5
    (bad,) = _issues_for(report.issues, "user u2[2]")
    assert bad.action == "interaction skipped"


def test_leave_one_out() -> None:
    split = leave_one_out("u", ["a", "b", "c", "d", "e"])
    assert split.train_history == ["a", "b", "c"]
    assert split.valid_target == "d"
    assert split.test_target == "e"
    minimal = leave_one_out("u", ["a", "b", "c"])
    assert (minimal.train_history, minimal.valid_target, minimal.test_target) == (
        ["a"],
        "b",
        "c",
    )
    with pytest.raises(ValueError):
        leave_one_out("u", ["a", "b"])


def test_tables_round_trip(bad_files: tuple[Path, Path], tmp_path: Path) -> None:
    result = ingest(*bad_files)
    out = tmp_path / "tables"
    write_tables(result, out)
    assert read_items(out) == result.items
    users = read_users(out)
    assert users == result.users
    by_id = {u.user_id: u for u in users}
    # u2 lost the unknown interaction before the split: 0,1,2,3 -> train [0,1], valid 2, test 3
    assert by_id["u2"].train_history == ["0", "1"]
    assert (by_id["u2"].valid_target, by_id["u2"].test_target) == ("2", "3")
    assert pq.read_schema(out / "users.parquet").names == [
        "user_id",
        "train_history",
        "valid_target",
        "test_target",
    ]
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["items_skipped"] == 5
    assert {"record": "empty", "field": "title"}.items() <= next(
        i for i in report["issues"] if i["record"] == "empty"
    ).items()
