"""One render, one output, on a pod-like host (a writable workspace volume, as RunPod mounts at /workspace):
two settings of one recipe never share outputs, a finished run started again says so (or trains again with
--fresh), another render's outputs are never written into, full fine-tuning merges nothing and is evaluated
and uploaded as it is, the tokenizer rewrite is atomic and never fails a finished training, stacked merges
describe the run merged, incomplete checkpoints leave transformers' rotation alone, HOSTFILE keeps --no_ssh."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (BIN, FAKE_TOKEN, lfx, run_launcher, snapshot, tiny_recipe_dict, train_config, weights_and_states,
                      write_recipe)
from hub_standin import HubStandin


def _env(**extra: str) -> dict[str, str]:
    # The script's own `lfx check` step (14 s a start) is tested in test_launch.py and by the demo; here what is
    # under test is where outputs go, so the starts skip it.
    env = {k: v for k, v in os.environ.items() if k not in ("OUTPUT_ROOT", "HF_TOKEN")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
            "PYTHONUNBUFFERED": "1", "LFX_SKIP_CHECK": "1", **extra}  # fmt: skip


def _recipe(model: Path, folder: Path, name: str = "persona", **extra) -> Path:
    recipe = tiny_recipe_dict(model, max_steps=2, save_steps=1, launch={"gpus": 1, "zero_stage": 3, "launcher": "torchrun"})
    recipe.update(extra)
    return write_recipe(folder / f"{name}.yaml", recipe)


def _render(recipe: Path, run: Path, *extra: str) -> str:
    result = lfx("render", str(recipe), "-o", str(run), *extra)
    assert result.exit_code == 0, result.output
    return json.loads((run / "run.json").read_text(encoding="utf-8"))["run_id"]


def _train(run: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(run / "train_sft.sh"), *flags], env=_env(**env), capture_output=True, text=True, timeout=900)


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in snapshot(folder).items()}


def test_two_settings_of_one_recipe_train_into_their_own_folders_on_one_volume(tiny_llama3, tmp_path):
    """The same recipe rendered twice, the second with another learning rate, on one workspace: the second
    starts from scratch in its own folder (never resuming the first's checkpoint), the first's files stay as
    they were; an edited recipe is a third run; `lfx runs` lists them."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    recipe = _recipe(tiny_llama3, tmp_path)
    first = _render(recipe, tmp_path / "runs" / "a")
    second = _render(recipe, tmp_path / "runs" / "b", "learning_rate=5e-3")
    assert first != second and first.startswith("persona-") and second.startswith("persona-")
    assert _render(recipe, tmp_path / "runs" / "a2") == first  # the same settings: the same run
    proc = _train(tmp_path / "runs" / "a", LFX_WORKSPACE=str(workspace))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    first_out = workspace / "lfx-runs" / first / "output"
    assert (first_out / "adapter_model.safetensors").is_file() and (first_out / "checkpoint-2").is_dir()
    before = _hashes(workspace / "lfx-runs" / first)
    proc = _train(tmp_path / "runs" / "b", LFX_WORKSPACE=str(workspace))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "starting from scratch" in proc.stdout and "resuming" not in proc.stdout
    assert (workspace / "lfx-runs" / second / "output" / "adapter_model.safetensors").is_file()
    assert _hashes(workspace / "lfx-runs" / first) == before
    edited = _render(_recipe(tiny_llama3, tmp_path, cutoff_len=384), tmp_path / "runs" / "c")
    assert edited not in (first, second)
    listing = lfx("runs", "--workspace", str(workspace))
    assert listing.exit_code == 0 and first in listing.stdout and second in listing.stdout
    assert f"{first}  finished, checkpoint 2, not merged" in listing.stdout


def test_a_finished_run_started_again_says_it_is_done_and_fresh_trains_again(tiny_llama3, tmp_path):
    """save_strategy "no" (no checkpoint to resume): a second start used to end in LLaMA-Factory's "Output
    directory already exists"; now it exits 0 saying where the outputs are. --fresh moves them aside and trains."""
    run = tmp_path / "run"
    rid = _render(_recipe(tiny_llama3, tmp_path, save_strategy="no"), run)
    assert _train(run).returncode == 0
    out = run / "output"
    adapter = (out / "adapter_model.safetensors").read_bytes()
    again = _train(run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {rid} is done: its outputs are in {run}" in again.stderr and "Output directory already exists" not in again.stderr
    assert "starting from scratch" not in again.stdout and (out / "adapter_model.safetensors").read_bytes() == adapter
    fresh = _train(run, "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    aside = [p for p in run.iterdir() if p.name.startswith(f"output.{rid}.")]
    assert len(aside) == 1 and (aside[0] / "adapter_model.safetensors").read_bytes() == adapter
    assert (out / "adapter_model.safetensors").is_file() and (out / ".lfx_done").is_file()
    starts = [line for line in (run / "train.log").read_text().splitlines() if " start: " in line]
    assert len(starts) == 2  # the finished run's second start trained nothing


def test_another_render_never_trains_into_a_run_folders_outputs(tiny_llama3, tmp_path):
    """No workspace: outputs live in the run folder. Rendering another setting into the same folder and
    starting it is refused with one line naming both runs and the ways out; --fresh moves the old ones aside."""
    run = tmp_path / "run"
    recipe = _recipe(tiny_llama3, tmp_path)
    first = _render(recipe, run)
    assert _train(run).returncode == 0
    result = lfx("render", str(recipe), "-o", str(run), "learning_rate=5e-3")
    second = json.loads((run / "run.json").read_text(encoding="utf-8"))["run_id"]
    assert result.exit_code == 0 and f"output holds the outputs of run {first}" in result.stderr
    before = _hashes(run / "output")
    for flags in ((), ("--dry-run",)):
        proc = _train(run, *flags)
        assert proc.returncode == 2, proc.stdout[-2000:]
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and first in lines[0] and second in lines[0] and "--fresh" in lines[0], proc.stderr
    assert _hashes(run / "output") == before
    proc = _train(run, "--fresh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _hashes(run / f"output.{first}") == before
    assert (run / "output" / ".lfx_run_id").read_text().strip() == second


@pytest.mark.parametrize("kind", ["full", "freeze"])
def test_full_and_freeze_fine_tuning_merge_nothing_and_are_evaluated_and_uploaded_as_they_are(kind, tiny_llama3, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(tiny_llama3, tmp_path, finetuning_type=kind, val_size=0.15, save_steps=2)
    _render(recipe, run)
    with HubStandin() as hub:
        proc = _train(run, MERGE="1", EVAL="1", UPLOAD="1", HUB_REPO="tony/full-persona", HF_TOKEN=FAKE_TOKEN,
                      HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
        files = dict(hub.repos.get("tony/full-persona", {}).get("files", {}))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "nothing to merge" in proc.stdout and "no LoRA adapter" not in proc.stderr
    out = run / "output"
    assert not (run / "merged").exists() and (out / "eval.json").is_file()
    data = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert data["config"]["kind"] == "merged" and data["tuned"]["overall"]["n"] == 10
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= set(files)
    assert not any(name.startswith("checkpoint-") for name in files) and "adapter_config.json" not in files
    card = files["README.md"].decode()
    what = {"full": "Full fine-tune of", "freeze": "Freeze (partial) fine-tune of"}[kind]
    assert what in card and f"| `finetuning_type` | {kind} |" in card and "## Evaluation" in card
    # lfx plan's disk: the whole model in each checkpoint and as the output, the optimizer states of what trained
    disk = json.loads(lfx("plan", str(recipe), "--json").stdout)["disk"]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert disk["checkpoints"] == len(checkpoints) == 1 and disk["merged_gb"] == 0
    assert disk["checkpoint_gb"] * 1e9 == pytest.approx(weights_and_states(checkpoints[0]), rel=0.05)
    assert disk["output_gb"] * 1e9 == pytest.approx(weights_and_states(out), rel=0.05)


def test_the_tokenizer_rewrite_is_atomic_and_never_fails_a_finished_training(ironman_run, tmp_path, monkeypatch, capsys):
    from llamafactory_ext import train
    from llamafactory_ext.artifact import tokenizer_files

    out = tmp_path / "output"
    shutil.copytree(ironman_run["adapter"], out)
    before = (out / "tokenizer_config.json").read_bytes()
    real_replace = os.replace
    calls = []

    def killed_midway(src, dst):  # the process dies after two files were swapped in
        calls.append(dst)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(tokenizer_files.os, "replace", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        tokenizer_files.write_persona_tokenizer(out, ironman_run["config"]["model_name_or_path"], "llama3-persona")
    monkeypatch.undo()
    assert (out / "tokenizer_config.json").read_bytes() == before  # still whole: written last
    assert not [p for p in out.iterdir() if p.name.startswith(".tokenizer.")]  # nothing left aside
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).chat_template

    config = {"output_dir": str(out), "model_name_or_path": "nobody/not-cached-model", "template": "llama3-persona"}
    train.portable_tokenizer(config)  # a base that cannot be fetched: a warning, not a failed run
    err = capsys.readouterr().err
    assert "warning: training finished, but the tokenizer in" in err and f"lfx portable-tokenizer {out}" in err
    # A base whose eos is <|end_of_text|>, as Llama-3 base models ship it: only the template's stop word makes it <|eot_id|>.
    base = tmp_path / "llama3-base"
    shutil.copytree(ironman_run["config"]["model_name_or_path"], base)
    base_config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**base_config, "eos_token": "<|end_of_text|>"}))
    run_record = json.loads((out / "lfx_run.json").read_text())
    run_record["args"]["model_name_or_path"] = str(base)
    (out / "lfx_run.json").write_text(json.dumps(run_record))
    from transformers import AutoTokenizer as Tokenizers

    assert Tokenizers.from_pretrained(str(base)).eos_token == "<|end_of_text|>"
    result = lfx("portable-tokenizer", str(out))
    assert result.exit_code == 0, result.output  # the run record names the real base: redone
    rewritten = Tokenizers.from_pretrained(str(out))
    assert rewritten.eos_token == "<|eot_id|>" and rewritten.chat_template


def test_a_stacked_merge_carries_the_new_runs_record_never_the_bases(merged_ironman, tmp_path):
    """The workflow lfx merge prescribes for stacked adapters: merge A, train B on the merged A, merge B onto
    it. The result describes B (its record, its plots), not A's run or A's evaluation."""
    from llamafactory_ext.artifact.merge import merge

    base = tmp_path / "merged-a"
    shutil.copytree(merged_ironman, base)
    (base / "eval.json").write_text('{"config": {"note": "the evaluation of run A"}}', encoding="utf-8")
    out = tmp_path / "b"
    config = train_config(base, out, max_steps=2, save_steps=2, deepspeed=None, learning_rate=2e-3)
    proc = run_launcher([sys.executable, "-m", "llamafactory_ext.train", str(out / "train.yaml"), "ddp_backend=null"], out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    merged = merge(config["output_dir"], tmp_path / "merged-b", progress=False)
    record = json.loads((merged / "lfx_run.json").read_text(encoding="utf-8"))
    assert record["args"]["model_name_or_path"] == str(base) and record["args"]["learning_rate"] == 2e-3
    assert not (merged / "eval.json").exists()
    assert (merged / "training_loss.png").read_bytes() == (Path(config["output_dir"]) / "training_loss.png").read_bytes()


def test_incomplete_checkpoints_leave_transformers_rotation_alone(tiny_llama3, tmp_path):
    """save_total_limit 1 beside a checkpoint cut short: it is set aside out of `checkpoint-*` (transformers'
    rotation globs that and reads `checkpoint-3.incomplete` as step 3), so rotation neither counts nor deletes
    it, and the restarted run keeps exactly one complete checkpoint."""
    run = tmp_path / "run"
    _render(_recipe(tiny_llama3, tmp_path, max_steps=3, save_total_limit=1), run)
    first = _train(run)
    assert first.returncode == 0, first.stderr[-3000:]
    out = run / "output"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    (out / "checkpoint-3" / "trainer_state.json").unlink()  # a save killed midway: the state is written last
    (out / ".lfx_done").unlink()
    proc = _train(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint-3: incomplete, skipped and moved to {out}/.incomplete/checkpoint-3" in proc.stderr
    assert "starting from scratch" in proc.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert (out / ".incomplete" / "checkpoint-3").is_dir()  # rotation never touched what was set aside


def test_hostfile_keeps_no_ssh_and_the_node_rank(tiny_llama3, tmp_path):
    recipe = _recipe(tiny_llama3, tmp_path, launch={"gpus": 1, "nodes": 2, "zero_stage": 3, "launcher": "deepspeed"})
    run = tmp_path / "run"
    _render(recipe, run)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("10.0.0.1 slots=1\n10.0.0.2 slots=1\n")
    proc = _train(run, "--dry-run", HOSTFILE=str(hostfile), NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                  OUTPUT_ROOT=str(tmp_path / "vol"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for node in (0, 1):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"node {node} would run: "))
        assert f"--hostfile {hostfile} --no_ssh --node_rank {node}" in line, line
    missing = _train(run, "--dry-run", HOSTFILE=str(tmp_path / "nope"), OUTPUT_ROOT=str(tmp_path / "vol"))
    assert missing.returncode == 2 and "HOSTFILE=" in missing.stderr and "is not a file" in missing.stderr


def test_qlora_is_checked_rendered_trained_on_cpu_and_merged_into_the_full_precision_base(tiny_llama3, tmp_path):
    """quantization_bit 4 (bitsandbytes' 4-bit, which runs on CPU): `lfx check` passes it under ZeRO-3 as
    LLaMA-Factory allows it, the generated script trains it (one gloo process) and merges the adapter into the
    unquantized base, as QLoRA adapters are merged."""
    recipe = _recipe(tiny_llama3, tmp_path, quantization_bit=4, save_steps=2)
    result = lfx("check", str(recipe))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    _render(recipe, run)
    assert "quantization_bit: 4" in (run / "train.yaml").read_text(encoding="utf-8")
    proc = _train(run, MERGE="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = json.loads((run / "output" / "lfx_run.json").read_text(encoding="utf-8"))
    assert record["args"]["quantization_bit"] == 4
    from safetensors import safe_open

    with safe_open(str(run / "merged" / "model.safetensors"), "pt") as f:  # the merged weights are full precision
        assert all(f.get_slice(name).get_dtype() in ("F32", "BF16", "F16") for name in f.keys())
