"""Shared fixtures: tiny local models, a real 2-process ZeRO-3 LoRA SFT run, CLI helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FAKE_TOKEN = "hf_" + "FakeTokenForTests0123456789abcdefghij"  # split so secret scanners skip it

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")


def lfx(*args: str, env: dict | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from llamafactory_ext.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove a failed command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    from llamafactory_ext.tiny import build_tiny_model

    return build_tiny_model("llama3", tmp_path_factory.mktemp("models") / "tiny-llama3")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from llamafactory_ext.tiny import build_tiny_model

    return build_tiny_model("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen2")


def train_config(model: Path, out: Path, **extra) -> dict:
    """A LoRA SFT config for the ironman dataset on a tiny model, ZeRO-3 on CPU (gloo)."""
    config = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "ironman",
        "template": "llama3-persona",
        "cutoff_len": 512,
        "output_dir": str(out / "adapter"),
        "tokenized_path": str(out / "tokenized"),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3,
        "max_steps": 4,
        "logging_steps": 1,
        "save_steps": 4,
        "report_to": "none",
        "plot_loss": True,
        "deepspeed": str(REPO / "deepspeed_configs" / "ds_z3_config.json"),
        "ddp_backend": "gloo",
    }
    config.update(extra)
    path = out / "train.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return config


def run_launcher(cmd: list[str], out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "launcher.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return proc


@pytest.fixture(scope="session")
def ironman_run(tiny_llama3, tmp_path_factory):
    """The real thing: torchrun, 2 processes, DeepSpeed ZeRO-3, LLaMA-Factory LoRA SFT."""
    out = tmp_path_factory.mktemp("ironman_run")
    config = train_config(tiny_llama3, out)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "llamafactory_ext.train", str(out / "train.yaml")]  # fmt: skip
    proc = run_launcher(cmd, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"out": out, "config": config, "adapter": Path(config["output_dir"]), "log": proc.stdout + proc.stderr}


def _private_copy(name: str, env: str, tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / name
    shutil.copytree(REPO / name, folder)
    monkeypatch.setenv(env, str(folder))
    return folder


@pytest.fixture
def data_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of datasets/ that a test may break."""
    return _private_copy("datasets", "LFX_DATASETS_DIR", tmp_path, monkeypatch)


@pytest.fixture
def templates_copy(tmp_path, monkeypatch) -> Path:
    """A private copy of templates/ that a test may break."""
    return _private_copy("templates", "LFX_TEMPLATES_DIR", tmp_path, monkeypatch)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


@pytest.fixture(scope="session")
def merged_ironman(ironman_run, tmp_path_factory) -> Path:
    """The ironman run's adapter merged into its tiny base with lfx merge."""
    from llamafactory_ext.merge import merge

    return merge(ironman_run["adapter"], tmp_path_factory.mktemp("merged") / "ironman-merged", progress=False)


def tiny_recipe_dict(model: Path, **extra) -> dict:
    """launch/demo.yaml pointed at a tiny local model (the preset points at runs/, absent in a fresh clone)."""
    recipe = yaml.safe_load((REPO / "launch" / "demo.yaml").read_text(encoding="utf-8"))
    recipe.pop("preset")
    recipe.update(model_name_or_path=str(model), template="llama3-persona", lora_target="all")
    recipe.update(extra)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
