"""The pod install step: which pip commands run beside each shape of pod torch, and that it never
changes torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, lfx, tiny_recipe_dict, write_recipe

from llamafactory_ext.run.pod_install import TORCH_INDEX, InstallError, Torch, install_plan

POD_REPO = "/workspace/llamafactory-ext"
PINNED = ["install", "--constraint", "TORCH_CONSTRAINT", "-e", POD_REPO]


@pytest.mark.parametrize(
    "version,cuda,expected",
    [
        ("2.4.0+cu124", "12.4", ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cu124", "torchaudio==2.4.0", "torchvision==0.19.0"]),
        ("2.6.0+cu126", "12.6", ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cu126", "torchaudio==2.6.0", "torchvision==0.21.0"]),
        ("2.11.0+cu130", "13.0", ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cu130", "torchaudio==2.11.0", "torchvision==0.26.0"]),
        ("2.5.1+cpu", None, ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cpu", "torchaudio==2.5.1", "torchvision==0.20.1"]),
        # A PyPI wheel has no local label: its CUDA version names the index.
        ("2.7.1", "12.6", ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cu126", "torchaudio==2.7.1", "torchvision==0.22.1"]),
        ("2.8.0", None, ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/cpu", "torchaudio==2.8.0", "torchvision==0.23.0"]),
        ("2.6.0+rocm6.2.4", None, ["install", "--no-deps", "--index-url", f"{TORCH_INDEX}/rocm6.2.4", "torchaudio==2.6.0", "torchvision==0.21.0"]),
    ],
)
def test_companions_come_from_the_index_of_the_pod_torch_build(version, cuda, expected):
    assert install_plan(Torch(version, cuda, False, False), POD_REPO) == [expected, PINNED]


def test_importable_companions_are_left_alone():
    assert install_plan(Torch("2.6.0+cu126", "12.6", True, True), POD_REPO) == [PINNED]
    assert install_plan(Torch("2.6.0+cu126", "12.6", True, False), POD_REPO)[0][-1] == "torchvision==0.21.0"


def test_ngc_build_is_refused_with_what_to_install():
    with pytest.raises(InstallError, match=r"torch 2.6.0a0\+ecf3bae40a.nv25.01 is not a PyTorch release build .* install the "
                                           "torchaudio and torchvision that came with this torch"):
        install_plan(Torch("2.6.0a0+ecf3bae40a.nv25.01", "12.8", False, False), POD_REPO)
    # NGC images ship torchaudio and torchvision: with both importable there is nothing to fetch.
    assert install_plan(Torch("2.6.0a0+ecf3bae40a.nv25.01", "12.8", True, True), POD_REPO) == [PINNED]


def test_no_torch_installs_the_pinned_cpu_triple_with_the_repo():
    assert install_plan(None, POD_REPO) == [["install", "-e", f"{POD_REPO}[cpu]"]]


def test_a_mirror_index_replaces_the_pytorch_one():
    assert install_plan(Torch("2.6.0+cu126", "12.6", False, True), POD_REPO, "https://mirror.example/whl")[0][:4] == [
        "install", "--no-deps", "--index-url", "https://mirror.example/whl"]  # fmt: skip


def test_torch_1_is_refused():
    with pytest.raises(InstallError, match="needs torch 2.x"):
        install_plan(Torch("1.13.1+cu117", "11.7", False, False), POD_REPO)


# The pod's torch, borrowed from this venv: torch and what it imports, but neither torchaudio,
# torchvision nor anything of LLaMA-Factory's.
POD_TORCH = ("torch", "functorch", "torchgen", "nvidia", "cuda", "triton", "sympy", "mpmath", "networkx", "jinja2",
             "markupsafe", "filelock", "fsspec", "typing_extensions", "numpy", "setuptools")  # fmt: skip


def _pod_python(tmp_path: Path) -> Path:
    """A fresh venv whose only packages are a CUDA torch 2.11.0 (this venv's, linked in read-only)."""
    import sysconfig

    venv = tmp_path / "pod"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths()["purelib"])
    shim = tmp_path / "pod-torch"
    shim.mkdir()
    for entry in site.iterdir():
        base = entry.name.split("-")[0].lower().removesuffix(".py").replace(".libs", "")
        if base in POD_TORCH or any(base.startswith(p + "_") for p in ("nvidia", "cuda")):
            (shim / entry.name).symlink_to(entry)
    pod_site = next((venv / "lib").glob("python3*/site-packages"))
    (pod_site / "pod_torch.pth").write_text(str(shim) + "\n")
    return venv / "bin" / "python"


def test_real_install_path_adds_companions_and_the_repo_and_keeps_torch(tiny_llama3, tmp_path):
    """train_sft.sh on a pod whose python has only torch: the dry run prints the plan with that bare python (what
    it would install, which checks it cannot make there and why); the real start installs torchaudio/torchvision
    from the index (here LFX_TORCH_INDEX=PyPI, whose 2.11.0 wheels are the cu130 builds this torch is) and the
    repo with torch pinned, verifies torch unchanged, runs the run's check in that python, and trains."""
    pod = _pod_python(tmp_path)
    before = subprocess.run([str(pod), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert subprocess.run([str(pod), "-c", "import torchaudio"], capture_output=True).returncode != 0
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(tiny_llama3, max_steps=1, launch={"gpus": 1, "zero_stage": 3,
                                                                                                     "launcher": "torchrun"}))  # fmt: skip
    run = tmp_path / "run"
    assert lfx("render", str(recipe), "-o", str(run)).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(pod), LFX_REPO=str(REPO), LFX_DEVICE="cpu", PATH="/usr/bin:/bin", LFX_TORCH_INDEX="https://pypi.org/simple",
               MIN_FREE_DISK_GB="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HUB_REPO="tony/iron--man")  # fmt: skip
    dry = subprocess.run([str(run / "train_sft.sh"), "--dry-run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "lfx check: not made here: deepspeed, llamafactory not installed" in dry.stdout
    assert "Hub repo id tony/iron--man: its shape only (huggingface_hub is not installed here" in dry.stdout
    assert f"node 0 would run: {pod} -m torch.distributed.run" in dry.stdout
    proc = subprocess.run([str(run / "train_sft.sh")], env={**env, "HUB_REPO": "tony/iron-man"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"+ {pod} -m pip install --no-deps --index-url https://pypi.org/simple torchaudio==2.11.0 torchvision==0.26.0" in log
    assert f"+ {pod} -m pip install --constraint <file: torch==2.11.0> -e {REPO}" in log
    assert "ok:" in proc.stdout  # lfx check ran in the pod's python
    assert (run / "output" / "adapter_model.safetensors").is_file()
    after = subprocess.run([str(pod), "-c", "import torch, torchaudio, llamafactory; print(torch.__version__, torch.version.cuda)"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert after.returncode == 0 and after.stdout == before, after.stderr[-2000:]
