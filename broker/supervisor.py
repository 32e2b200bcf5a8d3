"""When to restart a role the engine started itself, and when to give up: pure decisions.

`pivot up` starts a pool and a watcher beside its broker. When one exits, it is
restarted after a backoff (0.1 s, then 0.5, 1, 2, 5 s as crashes accumulate); more than
CRASH_LIMIT crashes within CRASH_WINDOW_S stop the engine. Time comes in as arguments;
`broker/local.py` does the processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pivot.launch.procs import describe_exit

__all__ = ["BACKOFF_S", "CRASH_LIMIT", "CRASH_WINDOW_S", "GiveUp", "Restart", "Supervisor"]

CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Restart:
    role: str
    at: float
    message: str  # what happened, for the log and the displays


@dataclass(frozen=True)
class GiveUp:
    message: str


@dataclass
class Supervisor:
    crashes: list[float] = field(default_factory=list)
    due: dict[str, float] = field(default_factory=dict)  # role -> when to start it again

    def exited(self, role: str, what: str, rc: int | None, log: str, now: float) -> Restart | GiveUp:
        """`role` ("pool", "watcher") exited with `rc` at `now`: restart it, or stop."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self.crashes) > CRASH_LIMIT:
            self.due.clear()
            return GiveUp(
                f"Pivot's processes crashed {len(self.crashes)} times within {CRASH_WINDOW_S:.0f} s "
                f"(last: the {what}: {describe_exit(rc, 'it')}); stopping. See {log}"
            )
        at = now + BACKOFF_S[min(len(self.crashes), len(BACKOFF_S)) - 1]
        self.due[role] = at
        return Restart(role, at, f"the {what} stopped ({describe_exit(rc, 'it')}); restarting it (log: {log})")

    def take_due(self, now: float) -> list[str]:
        """The roles whose restart time has come (each returned once)."""
        ready = sorted(role for role, at in self.due.items() if now >= at)
        for role in ready:
            del self.due[role]
        return ready

    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)
