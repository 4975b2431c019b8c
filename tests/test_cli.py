"""The CLI's light paths never import torch, and the package is installed as `lfx` and `llamafactory-ext`."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
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


def test_lfx_help_answers_several_times_faster_than_llamafactory_cli(tmp_path):
    """The startup benchmark's claim, held: `lfx --help` imports no torch, so it answers at least 3 times faster
    than `llamafactory-cli help` on the same machine in the same run (72x measured on an idle machine)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_cli_startup.py", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["llamafactory_cli_help_s"] >= 3 * result["lfx_help_s"], result


def _group_with(error: BaseException):
    """The lfx command group with one more command that raises `error`: the CLI's own catch-all at work."""
    from llamafactory_ext.cli import LfxGroup

    @click.group(cls=LfxGroup)
    def group():
        pass

    @group.command()
    def fails():
        raise error

    return group


@pytest.mark.parametrize("error", [KeyError("merged"), IndexError("list index out of range"), ValueError("bad shape"),
                                   RuntimeError("CUDA error: an illegal memory access"), "oom", FileNotFoundError("gone")],
                         ids=["KeyError", "IndexError", "ValueError", "RuntimeError", "OutOfMemoryError", "unnamed OSError"])  # fmt: skip
def test_our_own_bugs_exit_1_with_the_debug_hint(error):
    import torch

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if error == "oom" else error
    result = CliRunner().invoke(_group_with(error), ["fails"], env={"LFX_DEBUG": "0"})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {type(error).__name__}: ") and "(unexpected: LFX_DEBUG=1 shows the traceback)" in lines[0]
    debug = CliRunner().invoke(_group_with(error), ["fails"], env={"LFX_DEBUG": "y"})  # LLaMA-Factory's truthiness
    assert debug.exception is error


def test_the_users_input_exits_2_without_the_hint(tmp_path):
    from llamafactory_ext.errors import LfxError

    for error, text in ((LfxError("r.yaml: field 'x': why"), "error: r.yaml: field 'x': why"),
                        (PermissionError(13, "Permission denied", str(tmp_path / "out")), f"error: {tmp_path / 'out'}: PermissionError")):  # fmt: skip
        result = CliRunner().invoke(_group_with(error), ["fails"])
        assert result.exit_code == 2 and result.stderr.startswith(text) and "LFX_DEBUG" not in result.stderr, result.stderr


def test_flags_are_read_as_llamafactory_reads_its_own(monkeypatch):
    from llamafactory.extras.misc import is_env_enabled

    from llamafactory_ext.paths import env_enabled

    for value in ("1", "true", "True", "Y", "y", "0", "false", "yes", "on", "", "2"):
        monkeypatch.setenv("LFX_TEST_FLAG", value)
        assert env_enabled("LFX_TEST_FLAG") == is_env_enabled("LFX_TEST_FLAG"), value
