"""The soak script's memory-growth figure."""

from __future__ import annotations

import os

import pytest

from loadtest.soak import growth, rss_bytes


def test_growth_compares_the_last_minute_with_the_minute_after_warmup() -> None:
    flat = [(float(t), 100) for t in range(0, 600, 10)]
    assert growth(flat, warmup_s=120) == 0.0
    # warm-up doubling is ignored; then 100 -> 110 by the end
    rising = [(float(t), 50 if t < 120 else 100 + (t - 120) // 48) for t in range(0, 600, 10)]
    assert growth(rising, warmup_s=120) == pytest.approx(0.085, abs=0.02)
    assert growth([], warmup_s=60) == 0.0


def test_rss_of_this_process_and_of_a_missing_one() -> None:
    assert rss_bytes(os.getpid()) > 10 * 2**20
    assert rss_bytes(2**22 + 12345) == 0
