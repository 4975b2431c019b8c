"""One recipe dialect for every command, run folders that stand alone, dry runs that are dry, no
tokens in recipes, and the resume point."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, FAKE_TOKEN, REPO, lfx, one_line_error, snapshot, tiny_recipe_dict, write_recipe
from hub_standin import HubStandin


def _hashes(*folders: Path) -> dict[str, str]:
    return {f"{folder}/{name}": hashlib.sha256(data).hexdigest() for folder in folders for name, data in snapshot(folder).items()}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
            "PYTHONUNBUFFERED": "1", **extra}  # fmt: skip


def test_lfx_train_takes_a_recipe_with_preset_launch_block_and_overrides(tiny_llama3, tmp_path):
    """The README's `lfx train RECIPE key=value`: the preset-free tiny recipe, launch block of 2
    processes under ZeRO-3, overrides typed and validated like the file's own keys."""
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_llama3))
    run = tmp_path / "run"
    proc = subprocess.run([str(BIN / "lfx"), "train", str(recipe), "max_steps=2", "learning_rate=5e-4", "-o", str(run)],
                          env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = run / "output"
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["current_steps"] == 2
    record = json.loads((out / "lfx_run.json").read_text())
    assert record["world_size"] == 2 and record["zero_stage"] == 3
    assert record["args"]["learning_rate"] == 5e-4 and record["recipe"]["launch"]["gpus"] == 2
    assert (out / "adapter_model.safetensors").is_file()


def test_the_demo_recipe_trains_through_lfx_train_dry_run(tmp_path):
    """`lfx train launch/demo.yaml` reads the preset (the tiny model under runs/ is built by make demo,
    so only the dry run is shown here): launch block gives 2 processes, torchrun."""
    proc = subprocess.run([str(BIN / "lfx"), "train", str(REPO / "launch" / "demo.yaml"), "-o", str(tmp_path / "run"),
                           "--dry-run"], env=_env(LFX_SKIP_CHECK="1"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--nproc_per_node 2" in proc.stdout and "-m llamafactory_ext.train" in proc.stdout
    assert not (tmp_path / "run" / "output").exists()


BAD_TRAIN = {
    "unknown_preset": (["preset=llama9"], "field 'preset': unknown preset 'llama9'"),
    "launch_gpus_zero": (["launch.gpus=0"], "field 'launch.gpus': expected a positive integer, got 0"),
    "launch_unknown_key": (["launch.gpu=2"], "unknown key 'launch.gpu' (did you mean 'gpus'?)"),
    "override_not_key_value": (["max_steps"], "override 'max_steps' is not key=value"),
    "override_dash": (["--max_steps=3"], "No such option '--max_steps'"),
    "override_bad_type": (["learning_rate=fast"], "field 'learning_rate': expected a number, got the string 'fast'"),
    "override_unknown_key": (["max_step=3"], "unknown key 'max_step': not a LLaMA-Factory argument (did you mean 'max_steps'?)"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN))
def test_lfx_train_bad_input_is_one_line_and_writes_nothing(case, tiny_llama3, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_llama3))
    before = snapshot(tmp_path)
    overrides, message = BAD_TRAIN[case]
    result = lfx("train", str(recipe), *overrides, "-o", str(tmp_path / "run"))
    one_line_error(result.exit_code, result.stderr, message)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["hf_hub_token", "ms_hub_token", "om_hub_token", "wandb_token"])
@pytest.mark.parametrize("where", ["file", "override"])
def test_a_token_in_a_recipe_is_refused_and_found_nowhere(key, where, tiny_llama3, tmp_path):
    recipe = tiny_recipe_dict(tiny_llama3)
    overrides = [f"{key}={FAKE_TOKEN}"] if where == "override" else []
    if where == "file":
        recipe[key] = FAKE_TOKEN
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    run = tmp_path / "run"
    for command in (["render", str(path), *overrides, "-o", str(run)], ["check", str(path), *overrides]):
        result = lfx(*command)
        assert result.exit_code == 2
        assert f"field '{key}': '{key}' is a credential" in result.stderr  # wandb_token: not LLaMA-Factory's, a secret all the same
        assert "HF_TOKEN" in result.stderr and FAKE_TOKEN not in result.stderr + result.stdout
    assert not run.exists()


def test_a_rendered_folder_holds_no_machine_path_and_checks_its_own_snapshot(tiny_llama3, data_copy, tmp_path):
    """Nothing in the folder names this checkout (it runs where the repo lives elsewhere); the check
    train_sft.sh runs reads the folder's data and template, not the live ones."""
    recipe = tiny_recipe_dict(tiny_llama3, dataset="ironman", eval_dataset="eco_multitask")
    run = tmp_path / "run"
    assert lfx("render", str(write_recipe(tmp_path / "tiny.yaml", recipe)), "-o", str(run)).exit_code == 0
    files = snapshot(run)
    assert not [name for name, data in files.items() if str(REPO).encode() in data]
    assert {"templates/llama3-persona.yaml", "data/ironman.json", "data/eco_multitask.json"} <= set(files)
    assert json.loads(files["data/dataset_info.json"])["eco_multitask"]["lfx"]  # our JSON-output rule kept
    # Break the live data after rendering: the run's own check does not care.
    (data_copy / "ironman.json").write_text("[]", encoding="utf-8")
    proc = subprocess.run([str(run / "train_sft.sh"), "--dry-run"], env=_env(LFX_DATASETS_DIR=str(data_copy)),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok:" in proc.stdout
    # Break the run's own snapshot: now it does.
    (run / "data" / "ironman.json").write_text("[]", encoding="utf-8")
    proc = subprocess.run([str(run / "train_sft.sh"), "--dry-run"], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"{run}/data/ironman.json" in proc.stderr
    # And its own DeepSpeed config.
    ds = json.loads((run / "ds_config.json").read_text())
    ds["zero_optimization"]["stage"] = 2
    (run / "ds_config.json").write_text(json.dumps(ds))
    result = lfx("check", str(run / "recipe.yaml"))
    assert result.exit_code == 2 and "ds_config.json: zero_optimization.stage 2 does not match launch.zero_stage 3" in result.stderr


def test_dry_runs_change_no_file_and_send_nothing(ironman_run, merged_ironman, tiny_llama3, tmp_path):
    """train_sft.sh --dry-run and merge_upload.sh --dry-run with MERGE=1 UPLOAD=1 over a finished run:
    the run folder and the output volume hash the same before and after, the stand-in Hub sees no call."""
    recipe = tiny_recipe_dict(tiny_llama3, launch={"gpus": 2, "zero_stage": 3, "launcher": "deepspeed", "hub_repo": "tony/dry"})
    run = tmp_path / "run"
    assert lfx("render", str(write_recipe(tmp_path / "tiny.yaml", recipe)), "-o", str(run)).exit_code == 0
    volume = tmp_path / "volume"
    shutil.copytree(ironman_run["adapter"], volume / "output")
    shutil.copytree(merged_ironman, volume / "merged")
    # This run trained into it (its start marks the output folder), and was cut before its end.
    (volume / "output" / ".lfx_run_id").write_text(json.loads((run / "run.json").read_text())["run_id"] + "\n")
    before = _hashes(run, volume)
    with HubStandin() as hub:
        env = _env(OUTPUT_ROOT=str(volume), MERGE="1", UPLOAD="1", HF_TOKEN=FAKE_TOKEN, HF_ENDPOINT=hub.url,
                   HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
        full = subprocess.run([str(run / "train_sft.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
        alone = subprocess.run([str(run / "merge_upload.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
        requests = list(hub.requests)
        repos = dict(hub.repos)
    assert full.returncode == 0, full.stderr[-3000:]
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert _hashes(run, volume) == before
    assert not repos and not requests
    out = full.stdout
    assert "dry run: nothing is installed, written, launched or sent" in out
    assert "install: nothing" in out
    assert f"resume: from {volume}/output/checkpoint-4" in out
    assert "node 0 would run: " in out and "deepspeed.launcher.runner" in out and "--num_gpus 2" in out
    assert "would merge the adapter into its base" in alone.stdout and f"-o {volume}/merged --force" in alone.stdout
    assert "would create private model repo" in alone.stdout and "tony/dry" in alone.stdout
    assert FAKE_TOKEN not in full.stdout + full.stderr + alone.stdout + alone.stderr


def test_merge_upload_dry_run_needs_no_hub_repo(ironman_run, tiny_llama3, tmp_path):
    run = tmp_path / "run"
    assert lfx("render", str(write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_llama3))), "-o", str(run)).exit_code == 0
    volume = tmp_path / "volume"
    shutil.copytree(ironman_run["adapter"], volume / "output")
    before = _hashes(run, volume)
    proc = subprocess.run([str(run / "merge_upload.sh"), "--dry-run"], env=_env(OUTPUT_ROOT=str(volume)),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "would merge" in proc.stdout and "would upload" not in proc.stdout
    assert _hashes(run, volume) == before


def _checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint as the Trainer leaves it: weights, a DeepSpeed partition, state written last."""
    import torch
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    (ckpt / f"global_step{step}").mkdir(parents=True)
    save_file({"w": torch.ones(4, 4)}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"m": torch.zeros(8)}, ckpt / f"global_step{step}" / "mp_rank_00_model_states.pt")
    (ckpt / "latest").write_text(f"global_step{step}")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is cut short"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "says step 3, not 4"),
        (lambda c: _cut(c / "adapter_model.safetensors"), "adapter_model.safetensors: cut short"),
        (lambda c: _cut(c / "global_step4" / "mp_rank_00_model_states.pt"), "mp_rank_00_model_states.pt: cut short"),
        (lambda c: shutil.rmtree(c / "global_step4"), "latest names DeepSpeed folder 'global_step4', which is missing"),
    ],
)
def test_resume_point_skips_an_incomplete_newest_checkpoint(damage, reason, tmp_path):
    from llamafactory_ext.run.checkpoints import resume_point, set_aside

    _checkpoint(tmp_path, 2)
    damage(_checkpoint(tmp_path, 4))
    chosen, skipped = resume_point(tmp_path)
    assert chosen == tmp_path / "checkpoint-2"
    assert [s[0].name for s in skipped] == ["checkpoint-4"] and reason in skipped[0][1]
    assert (tmp_path / "checkpoint-4").is_dir()  # only read
    set_aside(skipped[0][0])
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / ".incomplete" / "checkpoint-4").is_dir()
    assert resume_point(tmp_path) == (tmp_path / "checkpoint-2", [])


def test_resume_point_of_whole_checkpoints_is_the_newest(tmp_path):
    from llamafactory_ext.run.checkpoints import resume_point

    for step in (2, 10, 4):
        _checkpoint(tmp_path, step)
    assert resume_point(tmp_path) == (tmp_path / "checkpoint-10", [])
    assert resume_point(tmp_path / "absent") == (None, [])


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 16])
