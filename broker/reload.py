"""Reloads of the pipeline's code: a sub-machine of the broker's state
(`broker/state.py`), pure.

A code or params change asks every pool (and the broker's own loader) for a new
manifest. At most one reload is out at a time, and no wave starts while it is: another
change meanwhile is merged into a single follow-up reload, started once this one is
answered. The stages a code change stopped (cancelled, or running on the old code) are
carried over to the first wave after the reload.
"""

from __future__ import annotations

__all__ = ["Reload"]


class Reload:
    def __init__(self) -> None:
        self.active = False  # a load_manifest is out; no wave starts until it is answered
        self.trigger: tuple[str, list[str]] = ("code", [])  # of the reload out (and its follow-up)
        self.carry: set[str] = set()  # stages a code change stopped: run after the reload
        self._again: bool | None = None  # a follow-up asked (restart its workers?)

    def begin(self, restart: bool, paths: list[str]) -> bool:
        """A reload for `paths` (restarting workers: code changed). True: send it now;
        False: one is out already, and this one follows it."""
        kind = "code" if restart else "params"
        if self.active:
            self._again = bool(self._again) or restart
            self.trigger = (kind, sorted(set(self.trigger[1]) | set(paths)))
            return False
        self.active = True
        self.trigger = (kind, sorted(paths))
        return True

    def answered(self) -> tuple[bool, list[str]] | None:
        """The reload out was answered (a manifest, or an error). Returns the follow-up to
        begin now, (restart, paths), if one was asked meanwhile."""
        if not self.active:
            return None
        self.active = False
        if self._again is None:
            return None
        restart, self._again = self._again, None
        return restart, self.trigger[1]

    def take_carry(self) -> set[str]:
        carried, self.carry = self.carry, set()
        return carried
