"""The CLI's light paths never import torch, and the package is installed as `lfx` and `llamafactory-ext`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BIN

PROBE = (
    "import sys\n"
    "from llamafactory_ext.cli import main\n"
    "try:\n"
    "    main(sys.argv[1:], standalone_mode=False)\n"
    "finally:\n"
    "    heavy = sorted(m for m in ('torch', 'transformers', 'llamafactory', 'deepspeed') if m in sys.modules)\n"
    "    print('HEAVY=' + ','.join(heavy))\n"
)


@pytest.mark.parametrize("args", [["--help"], ["templates", "list"], ["datasets", "check"], ["datasets", "list"]])
def test_light_commands_do_not_import_torch(args):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout


@pytest.mark.parametrize("script", ["lfx", "llamafactory-ext"])
def test_console_scripts_are_installed(script):
    proc = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "templates" in proc.stdout and "datasets" in proc.stdout


def test_help_benchmark_reports_a_ratio(tmp_path):
    """The benchmark runs and reports a ratio (its numbers are informational, never asserted)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_cli_startup.py", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["lfx_help_s"] > 0 and result["llamafactory_cli_help_s"] > 0
    assert result["ratio"] == pytest.approx(result["llamafactory_cli_help_s"] / result["lfx_help_s"])
