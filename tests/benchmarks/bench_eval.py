"""`lfx eval`'s batched generation against one prompt at a time, on the real SmolLM2-135M-Instruct.

    python tests/benchmarks/bench_eval.py [--prompts 16] [--batch-size 16] [--max-new-tokens 48] [--json out.json]

Same model, same prompts (ironman_en instructions, through the persona-prompted chat template), same
run: greedy answers with `generate(batch_size=1)` and `generate(batch_size=N)` (left
padding). Reports prompts per second of each, the ratio (goal: at least 3x), and how many answers
are identical. The model is fetched and converted once into runs/models/ (`lfx fetch-model smollm2`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamafactory_ext.fetch import fetch_model  # noqa: E402
from llamafactory_ext.inference.generation import generate, load_model, load_tokenizer  # noqa: E402
from llamafactory_ext.persona.registration import get_template  # noqa: E402

MODEL_DIR = REPO / "runs" / "models" / "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
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
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
