"""`lfx --help` against `llamafactory-cli help`: wall time of each, same machine, same run.

    python tests/benchmarks/bench_cli_startup.py [--repeat 5] [--json out.json]

Reports the median of each and the ratio (how many times faster `lfx --help` answers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lfx = shutil.which("lfx", path=str(BIN)) or "lfx"
    lf_cli = shutil.which("llamafactory-cli", path=str(BIN)) or "llamafactory-cli"
    ours = timed([lfx, "--help"], args.repeat)
    theirs = timed([lf_cli, "help"], args.repeat)
    result = {"lfx_help_s": ours, "llamafactory_cli_help_s": theirs, "ratio": theirs / ours, "repeat": args.repeat}
    print(f"lfx --help            {ours:7.3f} s")
    print(f"llamafactory-cli help {theirs:7.3f} s")
    print(f"ratio                 {theirs / ours:7.1f}x faster")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
