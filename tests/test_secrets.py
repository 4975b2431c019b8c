"""A secret of any real shape, put wherever a user puts one, never reaches a file, a log or the Hub.

Fake values in the shapes real ones have (split so secret scanners skip this source): a Hugging Face user token
of `hf_` and 34 letters (no digit), today's 86-character W&B key and the older 40-hex one, OpenAI, Anthropic,
GitHub, AWS and RunPod keys, and kinds no list of ours knows; found by the detector in text, JSON and Korean
sentences, and no false alarm on the bundled datasets, templates and recipes. Then through a recipe, an override,
a preset, a plain LLaMA-Factory config on every rank, a template file, a dataset entry and a record; then a whole
run with real-shaped ones in the environment, every file it wrote, its log and what the Hub stand-in received
searched for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    BIN,
    FAKE_LEGACY_LOGGER_KEY,
    FAKE_LOGGER_KEY,
    FAKE_TOKEN,
    REPO,
    lfx,
    one_line_error,
    snapshot,
    tiny_recipe_dict,
    write_recipe,
)
from hub_standin import HubStandin

GITHUB_TOKEN = "ghp_" + "R0D6LwfeXfZFXtqWQokuBGJvu65UQ2FzulmZ"
# name -> (a real-shaped fake, the kind the detector names). Today's shapes, each by its own rule.
SHAPED = {
    "wandb_v1_86_characters": (FAKE_LOGGER_KEY, "a W&B API key"),
    "hugging_face_hf_34_letters": (FAKE_TOKEN, "a Hugging Face token"),
    "openai_project_sk_proj": ("sk-" + "proj-" + "pOnC1-4EakoKm5b-OAYGSTWjRlLK6sNdVU72lZ_o2-YH19dCqgn28s9Dp68GZN9Z3zLIbet6-U"
                               + "T3Blbk" + "FJ" + "zH-7_3eLO6m4H5x29iI_Vmy0s5bla5kzFpfITtaO-rC8qLk1urN0XtzWbnXjgSTdd8PM5Pp_7v",
                               "an OpenAI API key"),
    "anthropic_sk_ant": ("sk-" + "ant-api03-" + "tA3R6DiZezwfg5y9cqBruxXI21kXNxSwH7_1K7wP94pJmBDal6Q0xdTuTBoJBLIqmHm3vnhT"
                         + "xnOJiLOuHGib0G1bhmEcN" + "AA", "an Anthropic API key"),
    "github_classic_ghp": (GITHUB_TOKEN, "a GitHub token"),
    "github_fine_grained": ("github_" + "pat_" + "hgRJK72wuXDMOPTNc7zuMn" + "_" + "MDBR4hRx3GR7qys80wdVTB4bsSvsU9XZ6htXAuL5bI9vmJdUhkNhhciHwMP",
                            "a GitHub token"),
    "aws_access_key_id": ("AKIA" + "TB1IW0YYP0OIL8B8", "an AWS access key"),
    "runpod_rpa": ("rpa_" + "9ZQJOBBR840QUIFL9C6QV7UDAP4DO6JZXO9RVMXW", "a RunPod API key"),
}  # fmt: skip
# Kinds no shape of ours names, found by what they are: detect-secrets' shape plugins, a value under a
# credential-named key (ours or detect-secrets' keyword plugin), a long random token (entropy above
# detect-secrets' limit: found reliably from 40 characters on, by chance below).
UNKNOWN = {
    "slack_bot_token": ("xoxb-" + "452630976582-8025822018051-" + "xtn8jpigu5geyqthw45h97pw", "a Slack Token (detect-secrets)"),
    "credential_named_key_in_an_env_file": ("MISTRAL_API_KEY=" + "9zyI9HZPQk9GgfjUyvJqtcVLQYmk5ssI",
                                            "a value under"),
    "credential_named_key_in_json": ('{"replicate_api_token": "' + "r8_" + 'DODJZE5YRLtmkOAjF5a8w091HSAYc"}',
                                     "a value under"),
    "password_in_yaml": ("db_password: " + "Tr0ub4dor&3-horse", "a value under"),
    "groq_key_by_its_entropy": ("gsk_" + "DODJZE5YRLtmkOAjF5a8w091HSAYcOlftxIUqiTVg5bIn22SLtKc", "a long random token"),
}  # fmt: skip
# Strings that look a little like keys and are not: commits, checksums, ids, special tokens, paths, references.
NOT_SECRETS = (
    "commit 0123456789abcdef0123456789abcdef01234567",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d08f5b0b4d6a0",
    "run id 123e4567-e89b-12d3-a456-426614174000",
    '{"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>", "unk_token": null}',
    "model_name_or_path: /root/.cache/huggingface/hub/models--meta-llama--Meta-Llama-3-8B-Instruct/snapshots/"
    "5f0b02c75b57c5855da9ae460ce51323ea669d8a",
    "run_name: tony-2024-lr5e-3-r16-alpha32-zero3-bs64-epoch4-final",
    "hub_token: null", "HF_TOKEN=<redacted>", "token: ${HF_TOKEN}", "api_key = os.environ['OPENAI_API_KEY']",
    "self.unk_token = unk_token", "{'loss': 1.2345, 'grad_norm': 0.98765, 'learning_rate': 4.9e-05, 'epoch': 0.12}",
    "checkpoint-1000/global_step1000/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    "wandb: Run data is saved locally in /workspace/lfx-runs/tony-3f2a9c1d/wandb/run-20261202_221314-k3j2h1g0",
)  # fmt: skip


@pytest.mark.parametrize("case", sorted(SHAPED) + sorted(UNKNOWN))
def test_the_detector_finds_each_kind_in_text_json_and_korean_sentences(case):
    from llamafactory_ext.secrets import find, find_in_text

    value, kind = {**SHAPED, **UNKNOWN}[case]
    for text in (value, f"export X={value}\n", json.dumps({"note": value}), f"내 키는 {value} 이야. 잊지 마."):
        found = find_in_text(text)
        assert found is not None and found.startswith(kind), (text, found)
    assert find({"run_name": value}) is not None  # a value in a recipe, under an ordinary key


def test_no_false_alarm_on_strings_that_only_look_like_keys():
    from llamafactory_ext.secrets import find, find_in_text

    for text in NOT_SECRETS:
        assert find_in_text(text) is None, text
    assert find({"model_revision": "0123456789abcdef0123456789abcdef01234567", "hub_token": None}) is None


def test_no_false_alarm_on_the_bundled_datasets_templates_and_recipes():
    """Every file of datasets/, templates/ and launch/ as text and as data, and the commands that read them."""
    from llamafactory_ext.secrets import find, find_in_text

    files = [p for folder in ("datasets", "templates", "launch") for p in sorted((REPO / folder).rglob("*")) if p.is_file()]
    assert len(files) >= 14
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert find_in_text(text) is None, path
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        assert find(data, allow_keys=("token",) if path.parent.name == "templates" else ()) is None, path
    for command in (["datasets", "check"], ["templates", "list"]):
        result = lfx(*command)
        assert result.exit_code == 0, result.output


def test_the_secret_is_never_in_the_message():
    from llamafactory_ext.secrets import SecretFound, refuse

    for value, _ in (*SHAPED.values(), *UNKNOWN.values()):
        with pytest.raises(SecretFound) as err:
            refuse("r.yaml", {"description": value})
        assert "r.yaml: field 'description'" in str(err.value) and value not in str(err.value)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
            "PYTHONUNBUFFERED": "1", **extra}  # fmt: skip


def _refused(result, where: str, field: str, *values: str) -> None:
    """One line, exit 2, naming the file and the field, never the value, saying where tokens come from."""
    line = one_line_error(result.exit_code, result.stderr)
    assert where in line and f"field '{field}'" in line, line
    assert "HF_TOKEN" in line and "hf auth login" in line
    for value in values:
        assert value not in result.output


# case -> (recipe changes, overrides, the field named)
SECRET_RECIPES = {
    "hub_token_in_recipe": ({"hub_token": FAKE_TOKEN}, [], "hub_token"),
    "hf_hub_token_in_recipe": ({"hf_hub_token": FAKE_TOKEN}, [], "hf_hub_token"),
    "swanlab_key_in_recipe": ({"swanlab_api_key": FAKE_LOGGER_KEY}, [], "swanlab_api_key"),
    "token_in_an_ordinary_field": ({"run_name": FAKE_TOKEN}, [], "run_name"),
    "logger_key_in_an_ordinary_field": ({"swanlab_run_name": FAKE_LOGGER_KEY}, [], "swanlab_run_name"),
    "legacy_40_hex_logger_key_in_an_ordinary_field": ({"run_name": FAKE_LEGACY_LOGGER_KEY}, [], "run_name"),
    "runpod_key_in_the_launch_block": ({"launch": {"gpu_type": SHAPED["runpod_rpa"][0]}}, [], "launch.gpu_type"),
    "github_token_anywhere": ({"hub_model_id": GITHUB_TOKEN}, [], "hub_model_id"),
    "a_credential_named_key": ({"wandb_api_key": "not-even-a-token-shape"}, [], "wandb_api_key"),
    "hub_token_override": ({}, [f"hub_token={FAKE_TOKEN}"], "hub_token"),
    "logger_key_override": ({}, [f"swanlab_api_key={FAKE_LOGGER_KEY}"], "swanlab_api_key"),
    "token_in_launch_block": ({"launch": {"hub_repo": FAKE_TOKEN}}, [], "launch.hub_repo"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SECRET_RECIPES))
def test_a_secret_in_a_recipe_or_override_is_refused_and_nothing_is_written(case, tiny_llama3, tmp_path):
    changes, overrides, field = SECRET_RECIPES[case]
    recipe = tiny_recipe_dict(tiny_llama3)
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if key == "launch" else value
    path = write_recipe(tmp_path / "persona.yaml", recipe)
    run = tmp_path / "run"
    for command in (["render", str(path), *overrides, "-o", str(run)], ["check", str(path), *overrides],
                    ["plan", str(path), *overrides], ["train", str(path), *overrides, "-o", str(run), "--dry-run"]):  # fmt: skip
        _refused(lfx(*command), str(path), field, FAKE_TOKEN, FAKE_LOGGER_KEY, GITHUB_TOKEN)
    assert not run.exists()


def test_a_secret_in_a_preset_is_refused(tiny_llama3, tmp_path, monkeypatch):
    from llamafactory_ext.recipe import load as recipe_load

    presets = tmp_path / "presets.yaml"
    presets.write_text(f"tony:\n  model_name_or_path: {tiny_llama3}\n  template: llama3-persona\n  hf_hub_token: {FAKE_TOKEN}\n",
                       encoding="utf-8")  # fmt: skip
    monkeypatch.setattr(recipe_load, "PRESETS_FILE", presets)
    recipe = tiny_recipe_dict(tiny_llama3)
    recipe.pop("model_name_or_path")
    path = write_recipe(tmp_path / "persona.yaml", {**recipe, "preset": "tony"})
    _refused(lfx("check", str(path)), "presets.yaml: preset 'tony'", "hf_hub_token", FAKE_TOKEN)


def test_a_secret_in_a_template_file_or_dataset_is_refused(tiny_llama3, templates_copy, data_copy, tmp_path):
    path = write_recipe(tmp_path / "persona.yaml", tiny_recipe_dict(tiny_llama3))
    spec = (templates_copy / "llama3-persona.yaml").read_text(encoding="utf-8")
    assert "\ndescription: " in spec
    (templates_copy / "llama3-persona.yaml").write_text(spec.replace("\ndescription: ", f"\ndescription: my key {FAKE_TOKEN}; "),
                                                        encoding="utf-8")  # fmt: skip
    _refused(lfx("check", str(path)), "llama3-persona.yaml", "description", FAKE_TOKEN)
    (templates_copy / "llama3-persona.yaml").write_text(spec, encoding="utf-8")

    info = json.loads((data_copy / "dataset_info.json").read_text(encoding="utf-8"))
    info["ironman"]["hf_hub_token"] = FAKE_TOKEN
    (data_copy / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    _refused(lfx("check", str(path)), "dataset_info.json: dataset 'ironman'", "hf_hub_token", FAKE_TOKEN)
    del info["ironman"]["hf_hub_token"]
    (data_copy / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")

    records = json.loads((data_copy / "ironman.json").read_text(encoding="utf-8"))
    records[4]["output"] += f" 내 토큰은 {FAKE_TOKEN} 이야."
    (data_copy / "ironman.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    before = snapshot(data_copy)
    _refused(lfx("check", str(path)), "ironman.json: record 4", "output", FAKE_TOKEN)
    assert snapshot(data_copy) == before


@pytest.mark.parametrize("where", ["file", "override"])
def test_a_plain_config_with_a_secret_stops_every_rank(where, tiny_llama3, tmp_path):
    """`torchrun -m llamafactory_ext.train CONFIG`: each rank refuses before LLaMA-Factory sees the key (it would
    be pickled into training_args.bin and kept in the run record)."""
    import yaml

    config = {"model_name_or_path": str(tiny_llama3), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "ironman", "template": "llama3-persona", "output_dir": str(tmp_path / "out"), "report_to": "none"}  # fmt: skip
    extra = []
    if where == "file":
        config["swanlab_api_key"] = FAKE_LOGGER_KEY
    else:
        extra = [f"hub_token={FAKE_TOKEN}"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "llamafactory_ext.train",
                           str(path), *extra], env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("error: ") and str(path) in line]
    # The first rank to refuse ends the run: torchrun stops the other, which may not have printed yet.
    assert 1 <= len(refusals) <= 2 and "Running training" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert FAKE_TOKEN not in proc.stdout + proc.stderr and FAKE_LOGGER_KEY not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()
    # A rank other than 0 refuses on its own (the launcher's environment of rank 1 of 2, no rendezvous reached).
    rank1 = subprocess.run([sys.executable, "-m", "llamafactory_ext.train", str(path), *extra], capture_output=True, text=True,
                           env=_env(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                    MASTER_PORT="1"), timeout=300)  # fmt: skip
    named = f"{path}: field 'swanlab_api_key'" if where == "file" else f"{path}: override: field 'hub_token'"
    one_line_error(rank1.returncode, rank1.stderr, named)
    assert not (tmp_path / "out").exists()


def test_the_redactor_the_background_log_goes_through_runs_on_a_bare_python():
    """`python -m llamafactory_ext.secrets redact` runs on a fresh pod before anything is installed: here with no
    site-packages at all (`-S`: no detect-secrets, nothing but the standard library). It still knows every shape,
    and the values of credential-named variables of its environment, whatever their shape."""
    lines = [f"{name}: {value}" for name, (value, _) in SHAPED.items()]
    lines += [f"logger {FAKE_LEGACY_LOGGER_KEY}", "commit 0123456789abcdef0123456789abcdef01234567"]
    proc = subprocess.run([sys.executable, "-S", "-m", "llamafactory_ext.secrets", "redact"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={"PATH": os.environ["PATH"], "SWANLAB_API_KEY": FAKE_LEGACY_LOGGER_KEY})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name, (value, _) in SHAPED.items():
        assert f"{name}: <redacted>" in proc.stdout and value not in proc.stdout, name
    assert FAKE_LEGACY_LOGGER_KEY not in proc.stdout  # a key in the environment is known, whatever its shape
    assert "0123456789abcdef0123456789abcdef01234567" in proc.stdout  # a commit hash is not a secret in a log


def test_a_whole_run_with_real_shaped_secrets_in_its_environment_leaves_them_nowhere(tiny_llama3, tmp_path):
    """Train in the background (a chatty tool prints the token into the log), checkpoint, merge, upload to the
    Hub stand-in: no file of the run folder, the workspace volume (output, checkpoints, merged, train.log),
    nor anything the Hub received holds the token or the logger key; the upload dry run shows neither."""
    import time

    recipe = tiny_recipe_dict(tiny_llama3, max_steps=2, save_steps=1, launch={"gpus": 1, "zero_stage": 3, "launcher": "torchrun"})
    path = write_recipe(tmp_path / "persona.yaml", recipe)
    run = tmp_path / "run"
    assert lfx("render", str(path), "-o", str(run)).exit_code == 0
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    chatty = tmp_path / "python"  # what a library that logs its environment would print while training
    chatty.write_text('#!/usr/bin/env bash\ncase "$*" in *torch.distributed.run*) echo "debug: HF_TOKEN=$HF_TOKEN '
                      f'SWANLAB_API_KEY=$SWANLAB_API_KEY" >&2 ;; esac\nexec {sys.executable} "$@"\n')  # fmt: skip
    chatty.chmod(0o755)
    with HubStandin() as hub:
        env = _env(LFX_WORKSPACE=str(workspace), MERGE="1", UPLOAD="1", HUB_REPO="tony/persona", HF_TOKEN=FAKE_TOKEN,
                   SWANLAB_API_KEY=FAKE_LOGGER_KEY, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
                   HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHON=str(chatty))  # fmt: skip
        proc = subprocess.run([str(run / "train_sft.sh"), "--background"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        log = next(workspace.glob("lfx-runs/*/train.log"))
        deadline = time.monotonic() + 600
        while " end: " not in log.read_text() and time.monotonic() < deadline:
            time.sleep(2)
        text = log.read_text()
        assert " status 0" in text, text[-4000:]
        assert "debug: HF_TOKEN=<redacted>" in text  # the chatty line was there, and redacted
        received = hub.repos["tony/persona"]["files"]
        dry = subprocess.run([str(BIN / "lfx"), "upload", str(log.parent / "merged"), "--repo", "tony/persona", "--dry-run"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert {"model.safetensors", "README.md", "lfx_run.json", "tokenizer_config.json"} <= set(received)
    assert any((log.parent / "output").glob("checkpoint-*"))
    files = {**snapshot(run), **snapshot(workspace), **{f"hub/{k}": v for k, v in received.items()}}
    for secret in (FAKE_TOKEN, FAKE_LOGGER_KEY):
        assert not [name for name, data in files.items() if secret.encode() in data], secret
        assert secret not in dry.stdout + dry.stderr + proc.stdout + proc.stderr
    # And the training machine does not travel either: no path of it in what the Hub received.
    for name, data in received.items():
        assert str(tmp_path).encode() not in data and str(Path.home()).encode() + b"/" not in data, name


def test_serve_takes_the_api_key_from_the_environment_and_never_shows_it(merged_ironman, tmp_path):
    """vLLM reads VLLM_API_KEY itself: lfx serve passes no key in any argument (vLLM's process list, its own) and
    prints none; a key given to lfx serve as an argument is refused in one line naming the variable."""
    fake_vllm = tmp_path / "site" / "vllm"
    fake_vllm.mkdir(parents=True)
    (fake_vllm / "__init__.py").write_text("")  # the dry run only asks whether vLLM is importable
    key = SHAPED["openai_project_sk_proj"][0]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}", "VLLM_API_KEY": key}
    proc = subprocess.run([str(BIN / "lfx"), "serve", str(merged_ironman), "--python", sys.executable, "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout + proc.stderr and "(requires the API key in VLLM_API_KEY)" in proc.stdout
    assert "--api-key" not in proc.stdout
    refused = subprocess.run([str(BIN / "lfx"), "serve", str(merged_ironman), "--python", sys.executable, "--api-key", key,
                              "--dry-run"], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    line = one_line_error(refused.returncode, refused.stderr, "--api-key: a key on the command line shows in every process list")
    assert "set VLLM_API_KEY in the environment" in line and key not in refused.stdout + refused.stderr


BAD_REPO_IDS = {
    "dot_dot": "tony/..",
    "double_dash": "tony/iron--man",
    "too_long": "tony/" + "m" * 97,
    "trailing_dot": "tony/ironman.",
    "no_user": "ironman",
}


@pytest.mark.parametrize("case", sorted(BAD_REPO_IDS))
def test_hub_repo_ids_are_checked_by_huggingface_hub_before_training(case, tiny_llama3, tmp_path):
    repo = BAD_REPO_IDS[case]
    recipe = tiny_recipe_dict(tiny_llama3, launch={"gpus": 1, "hub_repo": repo})
    path = write_recipe(tmp_path / "persona.yaml", recipe)
    for command in (["check", str(path)], ["render", str(path), "-o", str(tmp_path / "run")]):
        result = lfx(*command)
        assert result.exit_code == 2 and "field 'launch.hub_repo'" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # The same id given to a rendered run's scripts: refused in the dry run and before training alike.
    good = write_recipe(tmp_path / "good.yaml", tiny_recipe_dict(tiny_llama3, launch={"gpus": 1}))
    assert lfx("render", str(good), "-o", str(tmp_path / "run")).exit_code == 0
    for script, extra in (("train_sft.sh", ["--dry-run"]), ("train_sft.sh", []), ("merge_upload.sh", ["--dry-run"])):
        proc = subprocess.run([str(tmp_path / "run" / script), *extra], env=_env(HUB_REPO=repo, UPLOAD="1", HF_TOKEN=FAKE_TOKEN,
                              OUTPUT_ROOT=str(tmp_path / "vol")), capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 2, (script, extra, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "HUB_REPO" in proc.stderr and repo[:20] in proc.stderr
    assert not (tmp_path / "vol" / "output").exists()
