"""A RunPod pod that stops itself: which pod this is, how it is stopped, and for how long it may run.

On a pod, RunPod sets RUNPOD_POD_ID and installs `runpodctl` with a pod-scoped key, so a pod can stop
itself: `runpodctl pod stop ID` (older runpodctl: `runpodctl stop pod ID`). A run stops its pod when it ends
(launch.stop_pod_when_done, or RUNPOD_STOP_WHEN_DONE=1), and a maximum wall time (launch.max_wall_time, or
LFX_MAX_WALL_TIME, e.g. 12h) stops it anyway, whatever the run is doing, so a forgotten pod does not bill
for days. The deadline is kept by a small detached process (`python -m llamafactory_ext.pod watch`).

Standard library only: the launch plan reads these rules with a pod's bare python, before any install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)  # where the watchdog imports this package from
WATCHDOG_FILE = ".lfx_pod_watchdog"  # in OUTPUT_ROOT: the pid and deadline of the run's watchdog


def duration_seconds(text: str) -> float | None:
    """`90m`, `12h`, `1.5d`, `3600s` as seconds; None when it is not one of those (or not positive)."""
    found = DURATION.match(str(text))
    if not found or float(found.group(1)) <= 0:
        return None
    return float(found.group(1)) * UNIT_SECONDS[found.group(2)]


def pod_id(environ: dict[str, str]) -> str | None:
    return environ.get("RUNPOD_POD_ID") or None


def stop_command(pod: str) -> list[list[str]]:
    """The commands that stop `pod`, tried in order (current runpodctl, then the older word order)."""
    return [["runpodctl", "pod", "stop", pod], ["runpodctl", "stop", "pod", pod]]


def stop(pod: str, say=print) -> bool:
    """Stop the pod (this kills every process on it, this one included); False when runpodctl failed."""
    if shutil.which("runpodctl") is None:
        say(f"warning: cannot stop pod {pod}: runpodctl is not on PATH")
        return False
    for command in stop_command(pod):
        try:
            if subprocess.run(command, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            continue
    say(f"warning: could not stop pod {pod} ({' / '.join(' '.join(c) for c in stop_command(pod))} failed)")
    return False


def start_watchdog(pod: str, deadline: float, output_root: Path, python: str = sys.executable) -> int:
    """A detached process that stops the pod at `deadline` (epoch seconds), whatever happens to the run. A new
    start of the run replaces the watchdog of the one before. Returns its pid."""
    stop_watchdog(output_root)
    proc = subprocess.Popen([python, "-m", "llamafactory_ext.pod", "watch", f"{deadline:.0f}", pod],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": PACKAGE_PARENT})  # fmt: skip
    (output_root / WATCHDOG_FILE).write_text(f"{proc.pid} {deadline:.0f}\n", encoding="utf-8")
    return proc.pid


def stop_watchdog(output_root: Path) -> None:
    """End the watchdog an earlier start of this run left (if it still runs)."""
    path = output_root / WATCHDOG_FILE
    try:
        pid = int(path.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _is_our_watchdog(pid):
        try:
            os.kill(pid, 15)
        except OSError:
            pass
    path.unlink(missing_ok=True)


def _is_our_watchdog(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"llamafactory_ext.pod" in cmdline and b"watch" in cmdline


def watch(deadline: float, pod: str) -> int:
    while time.time() < deadline:
        time.sleep(min(60.0, max(0.2, deadline - time.time())))
    return 0 if stop(pod, say=lambda line: print(line, file=sys.stderr)) else 1


def main(argv: list[str]) -> int:
    """`python -m llamafactory_ext.pod watch DEADLINE POD_ID`: stop the pod at DEADLINE (epoch seconds)."""
    if len(argv) == 3 and argv[0] == "watch":
        return watch(float(argv[1]), argv[2])
    print("usage: python -m llamafactory_ext.pod watch DEADLINE POD_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
