"""A log-only catalog (no item file) through the real stack: feeds work, a query is a 400."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from models_export import dataset_files, pipeline
from tests.e2e.conftest import Stack, start_stack
from tests.synthetic_catalog import TINY, make_log, write_dataset

pytestmark = pytest.mark.e2e

DATASET = "toyshop/Toys"


@pytest.fixture(scope="module")
def log_only_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("log-only")
    data = write_dataset(base / "data", DATASET, log_only=True)
    steps = [s for s in pipeline.STEPS if s[0] != "eval_baselines"]
    pipeline.build(base / "arts", dataset_files.named(data, DATASET), steps=steps, settings=TINY)
    with ExitStack() as stack:
        yield start_stack(stack, base / "arts", base)


def test_query_to_a_log_only_catalog_is_a_clear_400(log_only_stack: Stack) -> None:
    status, body = log_only_stack.search(query="steel bolt", user_id="u0", k=5)
    assert status == 400, body
    assert "no item text" in body["detail"] and "without a query" in body["detail"]


def test_feeds_work_on_a_log_only_catalog(log_only_stack: Stack) -> None:
    in_log = {str(i) for history in make_log().values() for i in history}
    status, body = log_only_stack.search(query="", user_id="u0", k=5)
    assert status == 200, body
    ids = [i["id"] for i in body["items"]]
    assert len(ids) == 5 and set(ids) <= in_log
    assert body["degraded"] == []
    status, anonymous = log_only_stack.search(k=5)
    assert status == 200, anonymous
    assert {i["id"] for i in anonymous["items"]} <= in_log
