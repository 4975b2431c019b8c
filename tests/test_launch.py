"""Recipes rendered into run folders, and the generated train_sft.sh run for real on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, FAKE_TOKEN, REPO, lfx, snapshot
from hub_standin import HubStandin


def _render(recipe: Path, out: Path, *extra: str):
    return lfx("render", str(recipe), "-o", str(out), *extra, env={"HF_TOKEN": FAKE_TOKEN})


@pytest.mark.parametrize("name", ["ironman", "eco_multitask", "demo"])
def test_recipes_render_byte_identically_and_pass_shellcheck(name, tmp_path):
    out = tmp_path / name
    assert _render(REPO / "launch" / f"{name}.yaml", out).exit_code == 0
    first = snapshot(out)
    assert set(first) >= {"train.yaml", "ds_config.json", "train_sft.sh", "merge_upload.sh", "data/dataset_info.json"}
    assert _render(REPO / "launch" / f"{name}.yaml", out).exit_code == 0
    assert snapshot(out) == first
    for script in ("train_sft.sh", "merge_upload.sh"):
        assert os.access(out / script, os.X_OK)
        proc = subprocess.run(["shellcheck", str(out / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    assert all(FAKE_TOKEN.encode() not in data for data in first.values())


def test_ironman_recipe_is_the_seed_run(tmp_path):
    assert _render(REPO / "launch" / "ironman.yaml", tmp_path).exit_code == 0
    args = yaml.safe_load((tmp_path / "train.yaml").read_text(encoding="utf-8"))
    assert args["template"] == "llama3-persona" and args["lora_target"] == "all"
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (4, 4)
    assert (args["learning_rate"], args["num_train_epochs"], args["lr_scheduler_type"]) == (1e-4, 10.0, "cosine")
    assert args["bf16"] is True
    ds = json.loads((tmp_path / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    launch = json.loads((tmp_path / "run.json").read_text())["launch"]  # what every start decides from
    assert (launch["gpus"], launch["launcher"]) == (2, "deepspeed")


BAD_RECIPES = {
    "unknown_llamafactory_key": ("learning_rte: 1.0e-4\n", "unknown key 'learning_rte': not a LLaMA-Factory argument (did you mean 'learning_rate'?)"),
    "unknown_template": ("template: llama3-persnoa\n", "field 'template': unknown template 'llama3-persnoa'"),
    "unknown_dataset": ("dataset: ironmen\n", "field 'dataset': unknown dataset 'ironmen'"),
    "unknown_stage": ("launch: {zero_stage: 4}\n", "field 'launch.zero_stage': 4 is not one of 0, 2, 3"),
    "unknown_launcher": ("launch: {launcher: mpirun}\n", "field 'launch.launcher': 'mpirun' is not one of"),
    "batch_does_not_divide": ("launch: {gpus: 2, global_batch_size: 30}\n", "30 does not divide"),
    "zero_gpus": ("launch: {gpus: 0}\n", "field 'launch.gpus': expected a positive integer"),
    "bad_hub_repo": ("launch: {hub_repo: just-a-name}\n", "is not USER/NAME"),
    "unknown_preset": ("preset: llama9\n", "unknown preset 'llama9'"),
    "save_only_model_cannot_resume": ("save_only_model: true\n", "field 'save_only_model': checkpoints without optimizer state"),
    "overwrite_output_dir": ("overwrite_output_dir: true\n", "field 'overwrite_output_dir': would discard the checkpoints"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_is_one_line_exit_2_and_run_folder_untouched(case, tmp_path):
    text, message = BAD_RECIPES[case]
    base = yaml.safe_load((REPO / "launch" / "demo.yaml").read_text(encoding="utf-8"))
    base.update(yaml.safe_load(text))
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(base, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _render(recipe, out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert snapshot(out) == {"keep.txt": b"mine"}


def test_render_refuses_to_write_next_to_sources():
    result = lfx("render", str(REPO / "launch" / "demo.yaml"), "-o", str(REPO / "launch" / "out"))
    assert result.exit_code == 2 and "never go next to sources" in result.stderr
    assert not (REPO / "launch" / "out").exists()


def _run_script(run: Path, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu",
           "MIN_FREE_DISK_GB": "1", "HF_TOKEN": FAKE_TOKEN, "PYTHONUNBUFFERED": "1", **(env_extra or {})}  # fmt: skip
    proc = subprocess.run([str(run / "train_sft.sh")], env=env, capture_output=True, text=True, timeout=timeout)
    (run / "script.log").write_text(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def tiny_recipe(tiny_llama3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    recipe = yaml.safe_load((REPO / "launch" / "demo.yaml").read_text(encoding="utf-8"))
    recipe.pop("preset")
    recipe.update(model_name_or_path=str(tiny_llama3), template="llama3-persona", lora_target="all",
                  max_steps=4, save_steps=2, gradient_accumulation_steps=1)  # fmt: skip
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_generated_script_trains_zero3_on_2_processes_then_merges_and_uploads(launcher, tiny_recipe, tmp_path):
    """torchrun: train, merge, upload to a local stand-in Hub server; deepspeed: train and merge (the deepspeed
    launcher appends --local_rank to every rank's arguments, which the entry point consumes)."""
    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", launcher).exit_code == 0
    with HubStandin() as hub:
        after = {"MERGE": "1"}
        if launcher == "torchrun":
            after = {"UPLOAD": "1", "HUB_REPO": "tony/tiny-ironman", "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                     "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
        proc = _run_script(run, after)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = run / "output"
    assert (out / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["current_steps"] == 4
    merged = run / "merged"
    assert (merged / "model.safetensors").is_file() and "토니 스타크" in (merged / "chat_template.jinja").read_text()
    if launcher == "torchrun":
        files = hub.repos["tony/tiny-ironman"]["files"]
        assert files["model.safetensors"] == (merged / "model.safetensors").read_bytes()
        assert "llama3-persona" in files["README.md"].decode()
    assert FAKE_TOKEN not in (run / "script.log").read_text()
    assert all(FAKE_TOKEN.encode() not in data for data in snapshot(run).values())


def test_run_survives_source_edits_and_resumes_past_a_truncated_checkpoint(tiny_recipe, data_copy, tmp_path):
    """The run folder trains on its own data snapshot after the source dataset is edited; a restart
    skips the newest checkpoint, cut short by a killed save, and resumes from the one before; the log
    on the output volume gets a line per start; a failed merge after good training exits 3."""
    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", "torchrun").exit_code == 0
    records = json.loads((data_copy / "ironman.json").read_text(encoding="utf-8"))
    records[0]["output"] += " (edited after rendering)"
    (data_copy / "ironman.json").write_text(json.dumps(records + records[:3], ensure_ascii=False), encoding="utf-8")
    assert _run_script(run).returncode == 0, (run / "script.log").read_text()[-4000:]
    out = run / "output"
    # A save killed midway: checkpoint-4's weights cut short, the final outputs never written.
    weights = out / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for item in out.iterdir():
        if not item.name.startswith(("checkpoint-", ".lfx_run_id")):  # the run's mark is written at its start
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    proc = _run_script(run, {"MERGE": "1", "MERGED_DIR": "/proc/no-such-place/merged"})
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-4000:]
    assert f"resuming from {out}/checkpoint-2" in proc.stdout
    assert f"checkpoint-4: incomplete, skipped and moved to {out}/.incomplete/checkpoint-4: adapter_model.safetensors: cut short" in proc.stderr
    assert (out / ".incomplete" / "checkpoint-4").is_dir() and (out / "checkpoint-4" / "trainer_state.json").is_file()
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["current_steps"] for entry in log if "loss" in entry] == [3, 4]
    assert "training finished, but merging, evaluating or uploading failed; the outputs are safe in" in proc.stderr
    assert (out / "adapter_model.safetensors").is_file()
    starts = [line for line in (run / "train.log").read_text().splitlines() if " start: " in line]
    assert len(starts) == 2 and starts[0].endswith("resume none") and starts[1].endswith(f"resume {out}/checkpoint-2")


def test_script_preflight_refuses_missing_gpus_before_launch(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    assert _render(tiny_recipe, run).exit_code == 0
    proc = _run_script(run, {"LFX_DEVICE": "cuda", "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "no GPU visible" in proc.stderr
    assert not (run / "output" / "trainer_log.jsonl").exists()


def test_upload_without_token_is_refused_before_launch(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    assert _render(tiny_recipe, run).exit_code == 0
    env = {"UPLOAD": "1", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    proc = _run_script(run, env)
    assert proc.returncode == 2 and "UPLOAD=1 but no Hub repo: set launch.hub_repo" in proc.stderr


def test_background_run_writes_to_the_workspace_volume_and_stops_the_pod(tiny_recipe, tmp_path):
    """--background returns at once and logs to train.log; outputs land on the (here, stand-in)
    /workspace volume; with RUNPOD_STOP_WHEN_DONE=1 the pod is stopped after training."""
    import time

    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", "torchrun").exit_code == 0
    workspace, bin_dir = tmp_path / "workspace", tmp_path / "bin"
    workspace.mkdir()
    bin_dir.mkdir()
    stopped = tmp_path / "runpodctl-calls.txt"
    (bin_dir / "runpodctl").write_text(f'#!/usr/bin/env bash\necho "$*" >> {stopped}\n')
    (bin_dir / "runpodctl").chmod(0o755)
    env = {"LFX_WORKSPACE": str(workspace), "RUNPOD_STOP_WHEN_DONE": "1", "RUNPOD_POD_ID": "pod-123",
           "PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run([str(run / "train_sft.sh"), "--background"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1", **env})  # fmt: skip
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    assert run_id.startswith("tiny-")
    out = workspace / "lfx-runs" / run_id / "output"
    assert proc.returncode == 0 and f"tail -f {out.parent}/train.log" in proc.stdout
    assert not (out / "adapter_model.safetensors").exists()  # it returned before training wrote its adapter
    while not stopped.exists() and time.monotonic() - start < 540:
        time.sleep(2)
    log = out.parent / "train.log"
    assert stopped.read_text().strip() == "pod stop pod-123", log.read_text()[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and not (run / "output").exists()
    assert "train_loss" in log.read_text() and f" start: run {run_id}, node 0 of 1, 2 process(es), resume none" in log.read_text()


def _runpodctl(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for the runpodctl every pod has: records each call and the log's last line at that moment, and
    (as a real stop would) ends the training of the run it was called for."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "runpodctl-calls.txt"
    bin_dir.mkdir()
    (bin_dir / "runpodctl").write_text('#!/usr/bin/env bash\n'
                                       f'{{ echo "$*"; tail -n 1 "$OUTPUT_ROOT/train.log"; }} >> {calls}\n'
                                       'pkill -f "output_dir=$OUTPUT_ROOT/output" || true\n')  # fmt: skip
    (bin_dir / "runpodctl").chmod(0o755)
    return bin_dir, calls


def _pod_env(bin_dir: Path, root: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}", "RUNPOD_POD_ID": "q8vz1xk2rb7n3m",
            "OUTPUT_ROOT": str(root), **extra}  # fmt: skip


def test_background_refusals_and_finished_runs_are_told_in_the_foreground(tiny_recipe, tmp_path):
    """--background forks only the training: another render's outputs, a failing check and a finished run are
    each said here, with their exit status, and nothing is claimed, logged or started."""
    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", "torchrun").exit_code == 0
    rid = json.loads((run / "run.json").read_text())["run_id"]
    cases = {
        "another render": (lambda out: ((out / ".lfx_run_id").write_text("tiny-0badc0de\n"), (out / "adapter_model.safetensors").write_bytes(b"x")),
                           {"LFX_SKIP_CHECK": "1"}, 2, "holds the outputs of run tiny-0badc0de"),
        "finished": (lambda out: ((out / ".lfx_run_id").write_text(rid + "\n"), (out / ".lfx_done").write_text("2026-12-01\n")),
                     {"LFX_SKIP_CHECK": "1"}, 0, f"run {rid} is done"),
        "failing check": (lambda out: (run / "data" / "ironman.json").write_text("[]", encoding="utf-8"), {}, 2, "ironman.json"),
    }  # fmt: skip
    for case, (prepare, extra, status, message) in cases.items():
        root = tmp_path / case.replace(" ", "-")
        (root / "output").mkdir(parents=True)
        prepare(root / "output")
        before = snapshot(root)
        proc = _run_in(run, ["--background"], {"OUTPUT_ROOT": str(root), **extra})
        assert proc.returncode == status, (case, proc.stdout[-2000:], proc.stderr[-2000:])
        assert message in proc.stderr and "training in the background" not in proc.stdout, (case, proc.stderr)
        assert snapshot(root) == before and not (root / "train.log").exists(), case


def test_a_failed_training_stops_the_pod_once_its_log_is_on_the_volume(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", "torchrun").exit_code == 0
    (run / "data" / "ironman.json").write_text("[]", encoding="utf-8")  # the data breaks after the check
    bin_dir, calls = _runpodctl(tmp_path)
    root = tmp_path / "workspace" / "run"
    proc = _run_in(run, [], _pod_env(bin_dir, root, LFX_SKIP_CHECK="1", RUNPOD_STOP_WHEN_DONE="1"))
    assert proc.returncode not in (0, 2, 3), proc.stderr[-3000:]  # the training's own status
    said = calls.read_text().splitlines()
    assert said[0] == "pod stop q8vz1xk2rb7n3m" and f" end: run {json.loads((run / 'run.json').read_text())['run_id']}" in said[1]
    assert said[1].endswith(f"status {proc.returncode}") and len(said) == 2


def test_the_max_wall_time_stops_the_pod_while_training_runs(tiny_recipe, tmp_path):
    """LFX_MAX_WALL_TIME=3s on a run of 400 steps started in the background: the pod is stopped 3 s in, with the
    training still running (the stand-in ends it, as a real stop would); the log says how the run ended."""
    import time

    run = tmp_path / "run"
    assert _render(tiny_recipe, run, "--launcher", "torchrun", "max_steps=400", "save_steps=1000").exit_code == 0
    bin_dir, calls = _runpodctl(tmp_path)
    root = tmp_path / "workspace" / "run"
    start = time.monotonic()
    proc = _run_in(run, ["--background"], _pod_env(bin_dir, root, LFX_SKIP_CHECK="1", LFX_MAX_WALL_TIME="3s"))
    assert proc.returncode == 0 and "training in the background" in proc.stdout, proc.stderr[-3000:]
    assert "whatever happens (max wall time)" in proc.stdout
    while " end: " not in (root / "train.log").read_text() and time.monotonic() - start < 300:
        time.sleep(1)
    said = calls.read_text().splitlines()
    assert said[0] == "pod stop q8vz1xk2rb7n3m" and " end: " not in said[1]  # stopped while training ran
    assert not (root / "output" / ".lfx_done").exists() and time.monotonic() - start < 300


def _run_in(run: Path, flags: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
           "PYTHONUNBUFFERED": "1", **env_extra}  # fmt: skip
    return subprocess.run([str(run / "train_sft.sh"), *flags], env=env, capture_output=True, text=True, timeout=600)
