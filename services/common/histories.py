"""Users' histories as serving sees them (one home for the gateway and ranking)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

USERS_TABLE = "tables/users.parquet"


def serving_histories(users_parquet: Path) -> dict[str, list[str]]:
    """Every user's whole history, oldest first: serving sees everything the user did
    (the leave-one-out splits only matter offline)."""
    out: dict[str, list[str]] = {}
    for row in pq.read_table(users_parquet).to_pylist():
        history = [*row["train_history"], row["valid_target"], row["test_target"]]
        out[str(row["user_id"])] = [str(i) for i in history if i is not None]
    return out
