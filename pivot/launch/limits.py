"""Time limits more than one process relies on."""

# A stage asked to cancel (SIGUSR1) that is still running this long later (stuck in
# native code) has its worker killed by the pool; the broker waits a little longer.
HARD_KILL_S = 3.0
