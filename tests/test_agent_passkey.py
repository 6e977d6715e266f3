"""The passkey document builder and the reuse benchmark's summary (no model needed)."""

from __future__ import annotations

import pytest
from homer_agent.passkey import FILLER, build_document, door_code_needle, passkey_needle
from homer_agent.reuse_benchmark import summarize


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("n", [50, 333, 2000])
def test_length_is_at_most_n_and_within_one_filler(n):
    doc = build_document(words, n, [(0.5, passkey_needle(12345))])
    assert n - words(FILLER) < words(doc) <= n


def test_needles_sit_at_their_depths_in_order():
    doc = build_document(words, 1000, [(0.8, door_code_needle(4321)), (0.2, passkey_needle(12345))])
    a, b = doc.index(passkey_needle(12345)), doc.index(door_code_needle(4321))
    assert 0.1 < a / len(doc) < 0.3 and 0.7 < b / len(doc) < 0.9


def test_bad_depth_and_length():
    with pytest.raises(ValueError, match="depth"):
        build_document(words, 100, [(1.5, "x")])
    with pytest.raises(ValueError, match="n_tokens"):
        build_document(words, 0, [])


def test_summary_table():
    rec = dict(length=8000, cache_bytes=2**20)
    records = [
        {**rec, "mode": "exact", "question": 0, "correct": True, "seconds": 10.0},
        {**rec, "mode": "exact", "question": 1, "correct": False, "seconds": 12.0},
        {**rec, "mode": "agnostic", "question": 0, "correct": True, "seconds": 11.0},
        {**rec, "mode": "agnostic", "question": 1, "correct": True, "seconds": 1.0},
    ]
    table = summarize(records).splitlines()
    assert table[2] == "| 8000 | agnostic | 2/2 | 11.0 | 1.0 | 1 |"
    assert table[3] == "| 8000 | exact | 1/2 | 10.0 | 12.0 | 1 |"
