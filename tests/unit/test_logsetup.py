"""The held records handler: a pool's log lines are written in one go before it waits."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pivot.launch import logsetup
from pivot.launch.logsetup import HeldRecords, records_path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _handler(tmp_path: Path) -> tuple[HeldRecords, logging.Logger, Path]:
    path = records_path(tmp_path, "pool")
    path.parent.mkdir(parents=True)
    handler = HeldRecords(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-held-{tmp_path.name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, logger, path


def test_records_wait_for_flush_and_a_warning_writes_them_at_once(tmp_path: Path) -> None:
    handler, logger, path = _handler(tmp_path)
    try:
        logger.info("one")
        logger.info("two")
        assert _lines(path) == []
        handler.flush()
        assert _lines(path) == ["one", "two"]
        logger.info("three")
        logger.warning("trouble")
        assert _lines(path) == ["one", "two", "three", "trouble"]
    finally:
        handler.close()


def test_held_records_rotate_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "MAX_BYTES", 2000)
    handler, logger, path = _handler(tmp_path)
    try:
        for i in range(80):
            logger.info("record %d %s", i, "x" * 40)
            handler.flush()
        assert path.stat().st_size < 2000
        older = path.with_name(path.name + ".1")
        assert older.exists()
        kept = _lines(older) + _lines(path)
        assert kept[-1].startswith("record 79 ") and len(kept) < 80
    finally:
        handler.close()


def test_many_records_are_written_without_a_flush(tmp_path: Path) -> None:
    handler, logger, path = _handler(tmp_path)
    try:
        for i in range(logsetup.HOLD_MAX):
            logger.info("r%d", i)
        assert len(_lines(path)) == logsetup.HOLD_MAX
    finally:
        handler.close()


def test_a_held_record_says_what_its_arguments_were_when_it_was_logged(tmp_path: Path) -> None:
    """Records are formatted when written (off the pool's path between two stages); what
    they say is made when they are logged."""
    handler, logger, path = _handler(tmp_path)
    try:
        running = ["fit"]
        logger.info("running %s", running)
        running.append("eval")
        handler.flush()
        assert _lines(path) == ["running ['fit']"]
    finally:
        handler.close()
