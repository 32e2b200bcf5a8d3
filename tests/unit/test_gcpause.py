"""pivot/gcpause.py: the collector is off inside, as it was after, nesting included."""

from __future__ import annotations

import gc

import pytest

from pivot.gcpause import paused


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with paused():
            assert not gc.isenabled()
            with paused():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the inner block does not turn it back on
        assert gc.isenabled() == enabled
        with pytest.raises(ValueError), paused():
            raise ValueError("a failure inside")
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
