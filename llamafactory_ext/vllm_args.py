"""Run by vLLM's own python for `lfx serve`, never imported by lfx: reads lfx's arguments and the user's (those
after `--`) with vLLM's own parser, so every spelling vLLM accepts (--api-key K, --api_key K, --api-key=K, a
--config file, a positional model) is read as vLLM will read it; and, asked to, checks the model's settings
with vLLM's own model config (a --max-model-len beyond the model's context). Nothing of lfx is installed there.

stdin: {"ours": [...], "theirs": [...], "check_model": bool}. stdout, one JSON line: {"ours": {dest: value},
"theirs": {dest: value}, "flags": {dest: the argument that set it}, "error": what vLLM's parser said or null,
"model_error": what vLLM's model config said or null}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys


def parser() -> argparse.ArgumentParser:
    """`vllm.entrypoints.openai.api_server`'s parser (vLLM 0.32: vllm/entrypoints/launchers/api_server/entry.py)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm"))


def given(args: list[str]) -> tuple[dict, dict]:
    """The settings `args` give (defaults left out) and, for each, the argument that gave it."""
    reader = parser()
    for action in reader._actions:
        action.default = argparse.SUPPRESS
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            settings = vars(reader.parse_args(args))
    except SystemExit:
        lines = [line for line in said.getvalue().splitlines() if line.strip()]
        raise ValueError(lines[-1] if lines else "vLLM's parser refused them") from None
    flags = {}
    for arg in args:
        action = reader._option_string_actions.get(arg.split("=", 1)[0].replace("_", "-"))
        if action is not None and action.dest in settings:
            flags.setdefault(action.dest, arg.split("=", 1)[0])
    if "model_tag" in settings:
        flags["model_tag"] = settings["model_tag"]
    for dest in settings:
        flags.setdefault(dest, "--config" if any(a.startswith("--config") for a in args) else "--" + dest.replace("_", "-"))
    return settings, flags


def model_error(args: list[str]) -> str | None:
    """What vLLM's model config says of these settings (a --max-model-len beyond the model's context), or None."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    try:
        AsyncEngineArgs.from_cli_args(parser().parse_args(args)).create_model_config()
    except Exception as err:  # noqa: BLE001 (vLLM's own verdict, reported in one line)
        return " ".join(str(err).split())
    return None


def main() -> None:
    request = json.loads(sys.stdin.read())
    out = {"ours": {}, "theirs": {}, "flags": {}, "error": None, "model_error": None}
    try:
        out["ours"] = given(request["ours"])[0]
        out["theirs"], out["flags"] = given(request["theirs"])
    except ValueError as err:
        out["error"] = str(err)
    if out["error"] is None and request.get("check_model"):
        out["model_error"] = model_error(request["ours"] + request["theirs"])
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
