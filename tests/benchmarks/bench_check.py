"""`lfx check` against LLaMA-Factory's own preprocessing of the same data, on a generated
50,000-record alpaca dataset and the tiny Llama-3 tokenizer. LLaMA-Factory 0.9.5's `run_exp` goes on
to train after writing `tokenized_path`, so the baseline runs what its SFT workflow runs up to
there: argument parsing, tokenizer, template, `get_dataset` with `tokenized_path` (which tokenizes
and saves). Wall time and peak RSS (/usr/bin/time -v)
of each, measured in the same run.

    python tests/benchmarks/bench_check.py [--records 50000] [--work /tmp/bench-check] [--json out.json]

Goal: the check at least 3x faster than the preprocessing, and never above 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def build(work: Path, records: int) -> tuple[Path, Path, dict]:
    from llamafactory_ext.tiny import build_tiny_model

    model = work / "tiny-llama3"
    if not (model / "config.json").is_file():
        build_tiny_model("llama3", model)
    data = work / "datasets"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(REPO / "datasets", data)
    source = json.loads((REPO / "datasets" / "ironman.json").read_text(encoding="utf-8"))
    rng = random.Random(0)
    rows = []
    for i in range(records):  # recombined sentences of the bundled data: realistic text, few duplicates
        a, b, c = rng.sample(source, 3)
        rows.append({"instruction": f"{a['instruction']} {b['instruction']} #{i}", "input": "",
                     "output": f"{b['output']} {c['output']}"})  # fmt: skip
    (data / "big.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = json.loads((data / "dataset_info.json").read_text(encoding="utf-8"))
    info["big"] = {"file_name": "big.json", "formatting": "alpaca"}
    (data / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    args = {"model_name_or_path": str(model), "template": "llama3-persona", "stage": "sft", "do_train": True,
            "finetuning_type": "lora", "lora_target": "all", "dataset": "big", "cutoff_len": 512,
            "per_device_train_batch_size": 8, "learning_rate": 1.0e-4, "report_to": "none"}  # fmt: skip
    recipe = work / "big.yaml"
    recipe.write_text(yaml.safe_dump({**args, "launch": {"gpus": 1, "zero_stage": 0}}), encoding="utf-8")
    return recipe, data, args


PREPROCESS = """
import sys, yaml
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory_ext.train import prepare
config = prepare(yaml.safe_load(open(sys.argv[1])))
model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
"""


def measure(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return wall, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-check"))
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    recipe, data, args = build(opts.work, opts.records)
    env = {**os.environ, "LFX_DATASETS_DIR": str(data), "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
           "HF_DATASETS_CACHE": str(opts.work / "hf-datasets")}  # fmt: skip
    ours = measure([str(BIN / "lfx"), "check", str(recipe), "--json"], env, opts.work / "check.log")
    tokenized = opts.work / "tokenized"
    shutil.rmtree(tokenized, ignore_errors=True)
    shutil.rmtree(opts.work / "hf-datasets", ignore_errors=True)
    train = opts.work / "train.yaml"
    train.write_text(yaml.safe_dump({**args, "output_dir": str(opts.work / "out"), "tokenized_path": str(tokenized),
                                     "overwrite_cache": True}))  # fmt: skip
    theirs = measure([sys.executable, "-c", PREPROCESS, str(train)], env, opts.work / "preprocess.log")
    if not tokenized.is_dir():
        raise SystemExit(f"LLaMA-Factory did not write {tokenized}; see {opts.work / 'preprocess.log'}")
    result = {"records": opts.records, "lfx_check_s": round(ours[0], 1), "lfx_check_rss_gb": round(ours[1], 2),
              "llamafactory_preprocess_s": round(theirs[0], 1), "llamafactory_preprocess_rss_gb": round(theirs[1], 2),
              "speedup": round(theirs[0] / ours[0], 1)}  # fmt: skip
    print(f"| {opts.records:,} records | wall (s) | peak RSS (GB) |\n|---|---|---|")
    print(f"| lfx check | {result['lfx_check_s']} | {result['lfx_check_rss_gb']} |")
    print(f"| LLaMA-Factory preprocessing (get_dataset, tokenized_path) | {result['llamafactory_preprocess_s']} | "
          f"{result['llamafactory_preprocess_rss_gb']} |")  # fmt: skip
    print(f"speedup: {result['speedup']}x")
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
