"""Is a process alive, and when did it start: what the lease needs to tell a crashed owner from a live one.

Linux ``/proc`` where there is one; ``kill(pid, 0)`` elsewhere. A zombie has exited and can never
commit again, so it counts as dead.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive", "process_start_time"]


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie (someone else's counts)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except (OSError, OverflowError, ValueError):
        return _signal_zero(pid)
    # The state is the first field after the command name, which is in parentheses and may hold any byte.
    fields = stat.rsplit(b")", 1)[-1].split()
    return not fields or fields[0] not in (b"Z", b"X")


def _signal_zero(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """Wall time at which process ``pid`` started (Linux ``/proc``), or None where unknown."""
    boot = _boot_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): starttime, counted from ')' + 1 = field 3
    except (OSError, IndexError, ValueError):
        return None
    if boot is None:
        return None
    return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 2)
