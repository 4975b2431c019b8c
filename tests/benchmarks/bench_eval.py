"""`lfx eval`'s cost, on the real SmolLM2-135M-Instruct.

    python tests/benchmarks/bench_eval.py [--prompts 16] [--batch-size 16] [--max-new-tokens 48] [--json out.json]
                                          [--run runs/demo/run] [--eval-max-new-tokens 64] [--repeat 2]

1. Batched generation against one prompt at a time: same model, same prompts (ironman_en instructions, through
   the persona-prompted chat template), same run: greedy answers with `generate(batch_size=1)` and
   `generate(batch_size=N)` (left padding). Reports prompts per second of each, the ratio (goal: at least 3x),
   and how many answers are identical. The model is fetched and converted once into runs/models/.
2. The whole `lfx eval` of the demo run (`make demo`'s runs/demo/run) against the eval as it was before the persona
   metrics (the held-out prompts answered by base, prompted and tuned, scored), alternating in the same process
   after one warm-up, so machine load hits both alike. Reports each one's wall time and the ratio (goal: at most
   3x). Skipped, with a line saying so, when there is no demo run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamafactory_ext.evaluation.evaluate import evaluate  # noqa: E402
from llamafactory_ext.evaluation.heldout import held_out  # noqa: E402
from llamafactory_ext.evaluation.metrics import Answer, summarize  # noqa: E402
from llamafactory_ext.evaluation.report import write_outputs  # noqa: E402
from llamafactory_ext.evaluation.targets import resolve_target  # noqa: E402
from llamafactory_ext.fetch import fetch_model  # noqa: E402
from llamafactory_ext.inference.generation import generate, load_model, load_tokenizer  # noqa: E402
from llamafactory_ext.persona.registration import get_template  # noqa: E402

MODEL_DIR = REPO / "runs" / "models" / "smollm2-135m-instruct"


def three_variants(run: Path, max_new_tokens: int, batch_size: int) -> dict:
    """`lfx eval` before the persona metrics: the held-out prompts answered by base, prompted base and tuned (two
    model loads, one generate call each), scored with chrF, persona chrF, stop rate, loops and length."""
    target = resolve_target(run, None)
    evalset = held_out(target.record, target.record_path, target.run_dir)
    base_tokenizer, tuned_tokenizer = load_tokenizer(target.base), load_tokenizer(target.path)
    plain = [list(p.messages) for p in evalset.prompts]
    model = load_model(target.base)
    answers = {"base": generate(model, base_tokenizer, plain, max_new_tokens, batch_size),
               "prompted": generate(model, base_tokenizer, [[{"role": "system", "content": target.system}, *c] for c in plain],
                                    max_new_tokens, batch_size)}  # fmt: skip
    del model
    answers["tuned"] = generate(load_model(target.path), tuned_tokenizer, plain, max_new_tokens, batch_size)
    return {name: summarize([Answer(p.text, a.text, p.reference, a.stopped, p.dataset, p.task, p.json_expected)
                             for p, a in zip(evalset.prompts, replies)], evalset.persona_answers, evalset.language)
            for name, replies in answers.items()}  # fmt: skip


def whole_eval(run: Path, max_new_tokens: int, batch_size: int, repeat: int) -> dict | None:
    """Wall seconds of the eval before the persona metrics and of today's whole `lfx eval`, alternating."""
    import tempfile

    if not (run / "run.json").is_file():
        print(f"no demo run at {run} (make demo first): the whole-eval comparison is skipped")
        return None
    three_variants(run, 4, batch_size)  # warm-up: imports, caches, the first model load
    times: dict[str, list[float]] = {"before the persona metrics": [], "lfx eval": []}
    for _ in range(repeat):
        start = time.perf_counter()
        three_variants(run, max_new_tokens, batch_size)
        times["before the persona metrics"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            write_outputs(evaluate(run, max_new_tokens=max_new_tokens, batch_size=batch_size), out)
        times["lfx eval"].append(time.perf_counter() - start)
    before, now = (min(t) for t in times.values())
    print(f"\nthe demo's lfx eval ({run}, up to {max_new_tokens} new tokens), best of {repeat}:")
    print("| eval | wall (s) |")
    print("|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {min(seconds):.1f} |")
    print(f"ratio {now / before:.2f}x (goal <= 3x)")
    return {"before_s": before, "now_s": now, "ratio": now / before, "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo" / "run", help="the demo's run folder")
    parser.add_argument("--eval-max-new-tokens", type=int, default=64, help="as make demo runs lfx eval")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-batching", action="store_true", help="only the whole-eval comparison")
    args = parser.parse_args()
    result = {} if args.skip_batching else batching(args)
    result["whole_eval"] = whole_eval(args.run, args.eval_max_new_tokens, args.batch_size, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def batching(args) -> dict:
    import torch

    model_dir, _ = fetch_model("smollm2", MODEL_DIR)
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    system = get_template("smollm2-persona").default_system
    records = json.loads((REPO / "datasets" / "ironman_en.json").read_text(encoding="utf-8"))[: args.prompts]
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": r["instruction"]}] for r in records]
    generate(model, tokenizer, convs[:2], 4, batch_size=2)  # warm-up
    timings, answers = {}, {}
    for name, batch in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        answers[name] = generate(model, tokenizer, convs, args.max_new_tokens, batch_size=batch)
        timings[name] = time.perf_counter() - start
    single, batched = timings.values()
    same = sum(a == b for a, b in zip(*answers.values()))
    result = {"device": str(model.device), "threads": torch.get_num_threads(), "prompts": len(convs),
              "max_new_tokens": args.max_new_tokens, "one_at_a_time_s": single, "batched_s": batched,
              "batch_size": args.batch_size, "one_at_a_time_prompts_per_s": len(convs) / single,
              "batched_prompts_per_s": len(convs) / batched, "speedup": single / batched, "identical_answers": same}  # fmt: skip
    print(f"{len(convs)} prompts, up to {args.max_new_tokens} new tokens, {result['device']}, {result['threads']} threads")
    print("| mode | wall (s) | prompts/s |")
    print("|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.1f} | {len(convs) / seconds:.2f} |")
    print(f"speedup {single / batched:.1f}x (goal >= 3x); identical answers {same}/{len(convs)}")
    return result


if __name__ == "__main__":
    main()
