"""lfx upload against a local stand-in for the Hub's HTTP API (no network): repo creation, the weights through
Git LFS as the Hub takes them, the model card, a re-push that sends and commits nothing, the token kept out of
every output, and everything that would go up checked first (secrets, this machine's paths, another model's
files, broken weights), in the dry run too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, FAKE_LOGGER_KEY, FAKE_TOKEN, REPO
from hub_standin import GITATTRIBUTES, HubStandin


def _upload(*args: str, endpoint: str, token: str | None = FAKE_TOKEN, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=str(REPO))  # fmt: skip
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
        # The weights, the tokenizer's binary parts and the plots went through Git LFS (batch, upload, verify), the
        # text files as regular ones: the Hub's rules.
        assert {"model.safetensors", "training_loss.png"} <= repo["lfs"] and "config.json" not in repo["lfs"]
        lfs = [r["path"] for r in hub.requests if ".git/info/lfs/" in r["path"] or r["path"].startswith("/lfs-upload/")]
        assert any(p.endswith("/objects/batch") for p in lfs) and any(p.endswith("/objects/verify") for p in lfs)
        commits, requests = len(repo["commits"]), len(hub.requests)

        # Re-running resumes: nothing changed, so no content is sent again (the LFS batch answers "already there")
        # and nothing is committed.
        proc = _upload(str(merged_ironman), "--repo", "tony/ironman-tiny", endpoint=hub.url, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(repo["commits"]) == commits
        again = hub.requests[requests:]
        assert any(r["path"].endswith("/objects/batch") for r in again)
        assert not [r for r in again if r["method"] == "PUT" or "/commit/" in r["path"] or r["path"].endswith("/verify")]


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
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {tmp_path}: neither a model folder (config.json and weights) "
                           "nor a LoRA adapter (adapter_config.json)\n")


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
        assert files[".gitattributes"] == GITATTRIBUTES
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


def _png_with_text(path: Path, text: str) -> None:
    """The run's loss plot with a text chunk (PNG tEXt), as a tool that stamps its settings into images writes."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", text)
    Image.open(path).save(path, pnginfo=info)


def _safetensors_metadata(path: Path, note: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    save_file(tensors, str(path), metadata={"format": "pt", "note": note})


def _torch_checkpoint(path: Path, note: str, cut: int = 0) -> None:
    """A PyTorch checkpoint (torch.save's zip) beside the safetensors weights, holding `note`, cut short by `cut` bytes."""
    import torch

    torch.save({"lm_head.weight": torch.zeros(2, 2), "note": note}, path)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])


def _write(relative: str, text: str):
    def change(model: Path) -> None:
        (model / relative).parent.mkdir(parents=True, exist_ok=True)
        (model / relative).write_text(text, encoding="utf-8")

    return change


def _user() -> str:
    import getpass

    return getpass.getuser()


# case -> (change to a copy of the merged model, part of the one error line). Whatever the file's name or kind.
UPLOAD_REFUSED = {
    "secret_in_a_file_without_a_suffix": (_write("notes/setup", f"export WANDB_API_KEY={FAKE_LOGGER_KEY}\n"), "a W&B API key"),
    "unknown_key_in_a_config": (_write("serving.cfg", "[server]\nreplicate_api_token = r8_" + "DODJZE5YRLtmkOAjF5a8w091HSAYc\n"),
                                "a value under the credential-named key 'replicate_api_token'"),
    "secret_in_a_png_text_chunk": (lambda m: _png_with_text(m / "training_loss.png", f"HF_TOKEN={FAKE_TOKEN}"), "a Hugging Face token"),
    "secret_in_the_weights_metadata": (lambda m: _safetensors_metadata(m / "model.safetensors", FAKE_TOKEN), "a Hugging Face token"),
    "home_folder_inside_a_string": (_write("chat_template.jinja", "{# written in " + str(Path.home()) + "/personas #}\n"
                                           + "{{ messages[0]['content'] }}"), f"holds '{Path.home()}', a path of this machine"),
    "volume_inside_a_string": (_write("notes.txt", "merged from /workspace/lfx-runs/tony-3f2a9c1d/output\n"),
                               "holds '/workspace', a path of this machine"),
    "user_name_as_a_folder": (_write("notes.txt", f"copied from C:\\Users\\{_user()}\\Documents\\tony\n"),
                              f"a folder named after the user '{_user()}'"),
    "secret_in_a_pytorch_checkpoint": (lambda m: _torch_checkpoint(m / "pytorch_model.bin", f"token {FAKE_TOKEN}"), "a Hugging Face token"),
    "pytorch_checkpoint_cut_short": (lambda m: _torch_checkpoint(m / "pytorch_model.bin", "x", cut=200),
                                     "pytorch_model.bin: cut short or damaged"),
    "zero_byte_weights": (lambda m: (m / "model.safetensors").write_bytes(b""), "model.safetensors: zero bytes: not a model's weights"),
    "weights_cut_short": (lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:-100]),
                          "model.safetensors: cut short or damaged"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(UPLOAD_REFUSED))
def test_everything_that_would_go_up_is_checked_and_nothing_is_sent(case, merged_ironman, tmp_path):
    change, message = UPLOAD_REFUSED[case]
    model = tmp_path / "model"
    shutil.copytree(merged_ironman, model)
    change(model)
    with HubStandin() as hub:
        for dry in (["--dry-run"], []):
            proc = _upload(str(model), "--repo", "tony/persona", *dry, endpoint=hub.url, home=tmp_path)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and str(model) in lines[0], (dry, proc.stderr)
            assert "nothing was uploaded" in lines[0] and FAKE_TOKEN not in proc.stderr and FAKE_LOGGER_KEY not in proc.stderr
        assert hub.requests == [] and hub.repos == {}


def test_files_that_describe_another_model_stay_behind(merged_ironman, tmp_path):
    """A merge of a base carries what the base's folder held: its model card under another name, its original-format
    config, a model in a subfolder. None of it goes up (each named in a warning); the model does."""
    model = tmp_path / "model"
    shutil.copytree(merged_ironman, model)
    (model / "model_card.md").write_text("# Llama 3 base\n", encoding="utf-8")
    (model / "USAGE.md").write_text("---\nlicense: llama3\nbase_model: meta-llama/Meta-Llama-3-8B\n---\n# Base\n", encoding="utf-8")
    (model / "params.json").write_text(json.dumps({"dim": 4096, "n_layers": 32}), encoding="utf-8")
    (model / "original").mkdir()
    (model / "original" / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    (model / "LICENSE").write_text("the base's license, which a derivative carries\n", encoding="utf-8")
    with HubStandin() as hub:
        proc = _upload(str(model), "--repo", "tony/persona", endpoint=hub.url, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        files = hub.repos["tony/persona"]["files"]
    for name in ("model_card.md", "USAGE.md", "params.json", "original/config.json"):
        assert name not in files and f"left out {name}: " in proc.stdout, name
    assert {"LICENSE", "model.safetensors", "config.json", "README.md"} <= set(files)
