"""lfx upload against a local stand-in for the Hub's HTTP API (no network): repo creation, upload_folder,
the model card, resume, and the token kept out of every output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, FAKE_TOKEN
from hub_standin import HubStandin


def _upload(*args: str, endpoint: str, token: str | None = FAKE_TOKEN, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1")
    if token:
        env["HF_TOKEN"] = token
    proc = subprocess.run([str(BIN / "lfx"), "upload", *args], env=env, capture_output=True, text=True, timeout=120)
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    return proc


def test_upload_of_a_merged_model_to_a_local_standin_hub_server(merged_ironman, tmp_path):
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), "--repo", "tony/ironman-tiny", endpoint=hub.url, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        repo = hub.repos["tony/ironman-tiny"]
        assert repo["private"] is True
        files = repo["files"]
        for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", "training_loss.png", "README.md"):  # fmt: skip
            assert name in files, sorted(files)
        assert files["model.safetensors"] == (merged_ironman / "model.safetensors").read_bytes()
        card = files["README.md"].decode()
        assert "base_model" not in card.split("---")[1] or "tony" not in card  # a local base is not a Hub id
        assert "토니 스타크의 말투로 답변해야 합니다" in card  # the persona system prompt
        assert "`llama3-persona`" in card and "`<|eot_id|>`" in card and "`ironman`" in card
        assert "| `learning_rate` | 0.001 |" in card and "| `deepspeed` | ZeRO-3 |" in card
        assert "![training loss](training_loss.png)" in card and "apply_chat_template" in card
        writes = [r for r in hub.requests if r["path"].startswith(("/api/repos/create", "/api/models/tony/"))]
        assert len(writes) >= 4 and all(r["auth"] == f"Bearer {FAKE_TOKEN}" for r in writes)  # create, info, preupload, one commit
        commits = len(repo["commits"])

        # Re-running resumes: nothing changed, so nothing is committed again.
        proc = _upload(str(merged_ironman), "--repo", "tony/ironman-tiny", endpoint=hub.url, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(repo["commits"]) == commits


def test_upload_public_and_adapter_only_to_a_local_standin_hub_server(merged_ironman, ironman_run, tmp_path):
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), "--repo", "tony/ironman-lora", "--public", "--adapter-only",
                       endpoint=hub.url, home=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        repo = hub.repos["tony/ironman-lora"]
        assert repo["private"] is False
        files = repo["files"]
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert not [f for f in files if f.startswith(("checkpoint-", "global_step")) or f.endswith(".bin")]
        assert "AutoPeftModelForCausalLM" in files["README.md"].decode()


def test_upload_dry_run_prints_plan_and_card_and_sends_nothing(merged_ironman, tmp_path):
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), "--repo", "tony/x", "--dry-run", endpoint=hub.url, token=None, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert hub.requests == []
    assert "would create private model repo" in proc.stdout and "model.safetensors" in proc.stdout
    assert "--- README.md ---" in proc.stdout and "토니 스타크" in proc.stdout


@pytest.mark.parametrize(
    "args, token, message",
    [
        (["--repo", "just-a-name"], FAKE_TOKEN, "--repo: 'just-a-name' is not USER/NAME"),
        (["--repo", "tony/x"], None, "no Hugging Face token: set HF_TOKEN"),
    ],
)
def test_upload_bad_input_is_one_line_exit_2(merged_ironman, tmp_path, args, token, message):
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), *args, endpoint=hub.url, token=token, home=tmp_path)
        assert hub.requests == []
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_upload_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    proc = _upload(str(tmp_path), "--repo", "tony/x", endpoint="http://127.0.0.1:9", home=tmp_path)
    assert proc.returncode == 2 and "neither a model (config.json + *.safetensors) nor a LoRA adapter" in proc.stderr


def test_upload_uses_the_stored_hub_login_to_a_local_standin_hub_server(merged_ironman, tmp_path):
    (tmp_path / "token").write_text(FAKE_TOKEN)  # what `hf auth login` stores under HF_HOME
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), "--repo", "tony/from-login", endpoint=hub.url, token=None, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        writes = [r for r in hub.requests if r["path"].startswith("/api/models/tony/")]
        assert writes and all(r["auth"] == f"Bearer {FAKE_TOKEN}" for r in writes)


def _reshard(merged: Path, out: Path) -> Path:
    """The same merged model saved in two shards with an index, as a re-merge of a sharded base writes it."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(merged, out)
    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, keys in halves.items():
        save_file({k: state[k].contiguous() for k in keys}, str(out / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}  # fmt: skip
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


def test_a_re_push_leaves_the_repo_holding_exactly_what_was_pushed(merged_ironman, ironman_run, tmp_path):
    """Adapter, then merged (no adapter file may stay beside the weights: transformers would load the base it
    names instead), then adapter again (no weights stay), then a sharded re-merge and a single-file one (no
    stale shard). `.gitattributes` stays. Nothing that travels names a folder of this machine."""
    sharded = _reshard(merged_ironman, tmp_path / "sharded")
    repo_id = "tony/persona"

    def expected(folder: Path) -> set[str]:
        proc = _upload(str(folder), "--repo", repo_id, "--dry-run", endpoint=hub.url, token=None, home=tmp_path)
        listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ") and "bytes" in line}
        return listed | {"README.md", ".gitattributes"}

    with HubStandin() as hub:
        for folder in (ironman_run["adapter"], merged_ironman, ironman_run["adapter"], sharded, merged_ironman):
            proc = _upload(str(folder), "--repo", repo_id, endpoint=hub.url, home=tmp_path)
            assert proc.returncode == 0, proc.stderr
            files = hub.repos[repo_id]["files"]
            assert set(files) == expected(folder), (folder, sorted(files))
        assert "adapter_config.json" not in files and "model-00001-of-00002.safetensors" not in files
        assert files[".gitattributes"].startswith(b"*.safetensors")
    record = json.loads(files["lfx_run.json"])
    assert record["args"]["model_name_or_path"] == "tiny-llama3" and record["args"]["output_dir"] == "adapter"
    for name, data in files.items():
        assert str(tmp_path.parent).encode() not in data and b"/tmp/" not in data, name


def test_an_adapter_upload_names_its_base_by_hub_id_not_by_a_path_of_the_pod(ironman_run, tmp_path):
    """A base from the Hub cache (models--org--name/snapshots/REV) is named by its Hub id in the uploaded
    adapter_config.json, so `from_pretrained(repo)` finds it anywhere."""
    cache = tmp_path / "hub" / "models--meta-llama--Tiny-Persona-Base" / "snapshots" / "0123abcd"
    shutil.copytree(ironman_run["config"]["model_name_or_path"], cache)
    adapter = tmp_path / "adapter"
    shutil.copytree(ironman_run["adapter"], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(cache)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with HubStandin() as hub:
        proc = _upload(str(adapter), "--repo", "tony/lora", endpoint=hub.url, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        files = hub.repos["tony/lora"]["files"]
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "meta-llama/Tiny-Persona-Base"
    assert "base_model: meta-llama/Tiny-Persona-Base" in files["README.md"].decode()
