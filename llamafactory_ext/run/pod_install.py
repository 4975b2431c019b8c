"""What `train_sft.sh` installs on a pod, without ever touching the pod's own torch.

LLaMA-Factory imports torchaudio at import time, and a torchaudio built for another CUDA version than
torch refuses to load ("compiled with different CUDA versions"): every rank would die. PyPI carries one
CUDA build per release, so the torchaudio/torchvision added beside the pod's torch come from the
PyTorch wheel index of *that* torch's build (`.../whl/cu124`, `.../whl/cpu`), pinned to its release;
builds that are already importable are left alone; version shapes with no counterpart on that index
(NGC's `2.6.0a0+...nv25.01`) are refused with what to do instead. The repo itself is installed with
torch pinned by a constraint, so no dependency can replace it.

Standard library only: it runs with the pod's python before our dependencies are installed, as
`PYTHONPATH=REPO python -m llamafactory_ext.run.pod_install install PYTHON REPO [--dry-run]`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

TORCH_INDEX = "https://download.pytorch.org/whl"
RELEASE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\+(cu\d+|cpu|rocm\d+(?:\.\d+)*|xpu))?$")


class InstallError(Exception):
    pass


@dataclass(frozen=True)
class Torch:
    version: str  # torch.__version__, e.g. 2.6.0+cu126
    cuda: str | None  # torch.version.cuda, e.g. 12.6; None for a CPU build
    has_torchaudio: bool  # already present and importable beside this torch
    has_torchvision: bool
    distribution: str = ""  # the version pip knows it by (PyPI's CUDA wheels: 2.11.0 for 2.11.0+cu130)


def probe(python: str) -> Torch | None:
    """The torch of `python` (None when it has none), and whether torchaudio/torchvision import beside it."""
    code = ("import json, torch, importlib.metadata as md\n"
            "out = {'version': torch.__version__, 'cuda': torch.version.cuda, 'dist': md.version('torch')}\n"
            "for name in ('torchaudio', 'torchvision'):\n"
            "    try:\n        __import__(name); out[name] = True\n    except Exception:\n        out[name] = False\n"
            "print(json.dumps(out))")  # fmt: skip
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return None
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return Torch(found["version"], found["cuda"], found["torchaudio"], found["torchvision"], found["dist"])


def build_tag(torch: Torch) -> str:
    """The PyTorch index flavour of this torch: cu126, cpu, rocm6.2, ..."""
    found = RELEASE.match(torch.version)
    if not found:
        raise InstallError(
            f"torch {torch.version} is not a PyTorch release build (an NGC or source build?): the PyTorch index "
            "has no torchaudio/torchvision for it; install the torchaudio and torchvision that came with this torch "
            "(NGC images ship them) and re-run, or use a pod image with a PyTorch release"
        )
    if found.group(4):
        return found.group(4)
    if torch.cuda:  # a PyPI wheel carries no local label: its CUDA version says which build it is
        return "cu" + torch.cuda.replace(".", "")
    return "cpu"


def install_plan(torch: Torch | None, repo: str, index: str | None = None) -> list[list[str]]:
    """The pip argument lists to run, in order (each after `python -m pip`)."""
    if torch is None:  # no torch at all: the pinned CPU triple with the repo (the `cpu` extra)
        return [["install", "-e", f"{repo}[cpu]"]]
    pinned = ["install", "--constraint", "TORCH_CONSTRAINT", "-e", repo]
    if torch.has_torchaudio and torch.has_torchvision:  # whatever its build (NGC too): nothing to fetch
        return [pinned]
    tag = build_tag(torch)
    found = RELEASE.match(torch.version)
    release = ".".join(found.group(i) for i in (1, 2, 3))
    major, minor, patch = (int(found.group(i)) for i in (1, 2, 3))
    if major != 2:
        raise InstallError(f"torch {torch.version}: LLaMA-Factory 0.9.5 needs torch 2.x (>= 2.4)")
    companions = []
    if not torch.has_torchaudio:
        companions.append(f"torchaudio=={release}")
    if not torch.has_torchvision:  # torchvision 0.(minor+15) ships with torch 2.minor since 2.0
        companions.append(f"torchvision==0.{minor + 15}.{patch}")
    steps = []
    if companions:
        url = index or f"{TORCH_INDEX}/{tag}"
        steps.append(["install", "--no-deps", "--index-url", url, *companions])
    steps.append(pinned)
    return steps


def install(python: str, repo: str, dry_run: bool = False) -> None:
    """Run (or, dry, print) the plan with `python -m pip`, then check that torch is what it was and that
    LLaMA-Factory imports."""
    import tempfile

    before = probe(python)
    steps = install_plan(before, repo, os.environ.get("LFX_TORCH_INDEX") or None)
    with tempfile.TemporaryDirectory() as tmp:
        constraint = os.path.join(tmp, "torch-constraint.txt")
        if before is not None:
            if not dry_run:
                with open(constraint, "w", encoding="utf-8") as f:
                    f.write(f"torch=={before.distribution or before.version}\n")
            pin = f"torch=={before.distribution or before.version}"
        for step in steps:
            shown = [("<file: " + pin + ">") if a == "TORCH_CONSTRAINT" else a for a in step]
            print(("would run: " if dry_run else "+ ") + " ".join([python, "-m", "pip", *shown]), flush=True)
            if dry_run:
                continue
            code = subprocess.call([python, "-m", "pip", *[constraint if a == "TORCH_CONSTRAINT" else a for a in step]])
            if code != 0:
                raise InstallError(f"pip exited {code} on: pip {' '.join(shown)}")
    if not dry_run and before is not None:
        verify(python, before)


def verify(python: str, before: Torch) -> None:
    after = probe(python)
    if after is None or after.version != before.version or after.cuda != before.cuda:
        now = f"{after.version} (CUDA {after.cuda})" if after else "no importable torch"
        raise InstallError(f"the install changed torch: it was {before.version} (CUDA {before.cuda}), now {now}; "
                           f"reinstall the pod's torch {before.version}")  # fmt: skip
    proc = subprocess.run([python, "-c", "import llamafactory"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise InstallError(f"LLaMA-Factory does not import after the install: {last}")


def main(argv: list[str]) -> int:
    """install PYTHON REPO [--dry-run]"""
    dry = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    if len(args) != 3 or args[0] != "install":
        print("usage: python -m llamafactory_ext.run.pod_install install PYTHON REPO [--dry-run]", file=sys.stderr)
        return 2
    try:
        install(args[1], args[2], dry)
    except InstallError as err:
        print(f"train_sft.sh: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
