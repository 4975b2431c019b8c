"""`lfx pairs` and the `stage: dpo` round it feeds, for real: a tiny SFT run with a held-out split, its failures as a
LLaMA-Factory ranking dataset, DPO through the rendered run folder's train_sft.sh (2 gloo processes, ZeRO-3), merged
and evaluated on the SFT run's held-out split; and `lfx pairs` refusing a run it cannot build pairs from."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import BIN, lfx, one_line_error, snapshot, tiny_recipe_dict, write_recipe


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
            "PYTHONUNBUFFERED": "1", **extra}  # fmt: skip


def test_pairs_refuses_a_run_without_a_held_out_split(merged_ironman, tmp_path):
    """Without the split, lfx pairs cannot keep the held-out prompts out: one line, exit 2, nothing written."""
    before = snapshot(merged_ironman)
    result = lfx("pairs", str(merged_ironman), "-o", str(tmp_path / "pairs"))
    one_line_error(result.exit_code, result.stderr, "field 'args.val_size': the run has no held-out split")
    assert "lfx pairs answers only the run's training prompts" in result.stderr
    assert not (tmp_path / "pairs").exists() and snapshot(merged_ironman) == before


def test_sft_then_pairs_then_dpo_through_the_run_folder(tiny_llama3, tmp_path):
    sft = tmp_path / "sft"
    recipe = write_recipe(tmp_path / "sft.yaml", tiny_recipe_dict(tiny_llama3, val_size=0.2, max_steps=4,
                                                                  launch={"gpus": 1, "zero_stage": 0}))  # fmt: skip
    assert lfx("render", str(recipe), "-o", str(sft)).exit_code == 0
    proc = subprocess.run([str(sft / "train_sft.sh")], env=_env(MERGE="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    pairs = tmp_path / "pairs"
    result = lfx("pairs", str(sft), "-o", str(pairs), "--name", "ironman_pairs", "--max-new-tokens", "16")
    assert result.exit_code == 0, result.stderr
    records = json.loads((pairs / "ironman_pairs.json").read_text())
    info = json.loads((pairs / "dataset_info.json").read_text())["ironman_pairs"]
    assert info["ranking"] is True and records
    held = json.loads((sft / "merged" / "lfx_run.json").read_text())  # the split: never asked
    assert held["args"]["val_size"] == 0.2
    from llamafactory_ext.evaluation.heldout import held_out

    split = held_out(held, sft / "merged" / "lfx_run.json")
    assert not {r["instruction"] for r in records} & {p.text for p in split.prompts}
    assert {r["chosen"] for r in records if r["why"]} & {p.reference for p in split.training}

    dpo = tmp_path / "dpo"
    recipe = write_recipe(tmp_path / "dpo.yaml", tiny_recipe_dict(sft / "merged", stage="dpo", dataset="ironman_pairs",
                                                                  pref_beta=0.1, pref_ftx=0.5, max_steps=2))  # fmt: skip
    assert lfx("render", str(recipe), "-o", str(dpo), env={"LFX_DATASETS_DIR": str(pairs)}).exit_code == 0
    assert json.loads((dpo / "run.json").read_text())["stage"] == "dpo" and (dpo / "data" / "ironman_pairs.json").is_file()
    proc = subprocess.run([str(dpo / "train_sft.sh")], env=_env(MERGE="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    log = [json.loads(line) for line in (dpo / "output" / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["current_steps"] == 2
    result = lfx("eval", str(dpo), "-o", str(tmp_path / "eval"), "--max-new-tokens", "8")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    # measured on the SFT run's held-out split, against the base the SFT run started from
    assert report["config"]["prompts"] == "val_size 0.2 split of ironman (seed 42)" and report["config"]["n"] == len(split.prompts)
    assert report["config"]["base_model"] == str(tiny_llama3)
