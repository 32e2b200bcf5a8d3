"""A lock file's text: json.dumps(sort_keys=True, indent=2) of its fields, byte for byte,
whichever way it is written (StageLock.to_json writes the usual maps itself)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pivot.state.lock import StageLock, parse_lock

TEXT = st.text(max_size=12)  # every code point: quotes, backslashes, controls, non-ASCII
SCALAR = st.one_of(TEXT, st.integers(), st.booleans(), st.none())
ANY_VALUE = st.recursive(
    st.one_of(SCALAR, st.floats(allow_nan=True, allow_infinity=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


def reference(lock: StageLock) -> str:
    data = {
        "stage": lock.stage, "code": lock.code, "code_parts": lock.code_parts,
        "params": lock.params, "deps": lock.deps, "outs": lock.outs,
    }
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


@settings(max_examples=300, deadline=None)
@given(
    stage=TEXT, code=TEXT,
    code_parts=st.dictionaries(TEXT, TEXT, max_size=4),
    deps=st.dictionaries(TEXT, TEXT, max_size=4),
    outs=st.dictionaries(TEXT, TEXT, max_size=4),
    params=st.one_of(st.dictionaries(TEXT, SCALAR, max_size=4), st.dictionaries(TEXT, ANY_VALUE, max_size=3)),
)
def test_a_locks_text_is_jsons_sorted_indented_form(
    stage: str, code: str, code_parts: dict[str, str], deps: dict[str, str], outs: dict[str, str],
    params: dict[str, Any],
) -> None:
    lock = StageLock(stage, code, params, deps, outs, code_parts)
    text = lock.to_json()
    assert text == reference(lock)


def test_a_locks_text_reads_back_as_the_same_lock() -> None:
    lock = StageLock("fit@1", "abc", {"lr": 1, "name": 'a "b"\\', "on": True, "off": None, "big": 10**30},
                     {"data/ü.csv": "d1"}, {"out/m.pkl": "o1"}, {"pipeline.fit": "c1", "python": "3.11"})
    assert lock.to_json() == reference(lock)
    assert parse_lock(lock.to_json().encode()) == lock
