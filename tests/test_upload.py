"""lfx upload against a local stand-in for the Hub's HTTP API (no network): repo creation, upload_folder,
the model card, resume, and the token kept out of every output."""

from __future__ import annotations

import os
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
        assert len(writes) >= 5 and all(r["auth"] == f"Bearer {FAKE_TOKEN}" for r in writes)
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
    assert proc.returncode == 2 and "neither a merged model" in proc.stderr


def test_upload_uses_the_stored_hub_login_to_a_local_standin_hub_server(merged_ironman, tmp_path):
    (tmp_path / "token").write_text(FAKE_TOKEN)  # what `hf auth login` stores under HF_HOME
    with HubStandin() as hub:
        proc = _upload(str(merged_ironman), "--repo", "tony/from-login", endpoint=hub.url, token=None, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        writes = [r for r in hub.requests if r["path"].startswith("/api/models/tony/")]
        assert writes and all(r["auth"] == f"Bearer {FAKE_TOKEN}" for r in writes)
