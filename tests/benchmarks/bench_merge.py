"""`lfx merge` against the seed's approach (load, PeftModel.merge_and_unload, save_pretrained) and
`llamafactory-cli export`, on synthetic bf16 Llama models sharded at 400 MB with a rank-16
all-linear LoRA adapter. Peak RSS from /usr/bin/time -v and wall time, all measured in one run;
a plain copy of the files is the floor.

    python tests/benchmarks/bench_merge.py [--sizes 0.7b 2.7b] [--dora] [--work /tmp/bench-merge] [--json out.json]

`--dora` makes the adapter a DoRA one (a magnitude vector per module).

The adapter folder is what training leaves: the adapter, the run record and the persona tokenizer written at
the end of training, which `lfx merge` carries into the merged folder (it rebuilds it, importing LLaMA-Factory's
template code, only for another template or base: `--template`).

Goal: peak RSS at most 0.45x peft's, not growing with model size; wall time at most 0.5x peft's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SIZES = {  # hidden, intermediate, layers, heads, kv heads
    "0.7b": (1536, 4096, 24, 12, 4),
    "2.7b": (2560, 6912, 36, 20, 4),
}
VOCAB = 32000
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(size: str, work: Path, dora: bool = False) -> tuple[Path, Path, int]:
    """Base model (random bf16, 400 MB shards, real tokenizer files) and a rank-16 adapter (DoRA with `dora`)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llamafactory_ext.artifact.shards import ShardWriter
    from llamafactory_ext.tiny import build_tokenizer

    base, adapter = work / f"base-{size}", work / f"adapter{'-dora' if dora else ''}-{size}"
    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=4, dtype="bfloat16")  # fmt: skip
    with torch.device("meta"):
        shapes = [(n, tuple(p.shape)) for n, p in AutoModelForCausalLM.from_config(config).named_parameters()]
    params = sum(torch.Size(s).numel() for _, s in shapes)
    if not (base / "model.safetensors.index.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(base)
        build_tokenizer("llama3").save_pretrained(base)
        shards, current, size_now = [], [], 0
        for name, shape in shapes:
            nbytes = torch.Size(shape).numel() * 2
            if current and size_now + nbytes > 400e6:
                shards.append(current)
                current, size_now = [], 0
            current.append((name, shape))
            size_now += nbytes
        shards.append(current)
        weight_map = {}
        gen = torch.Generator().manual_seed(0)
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            writer = ShardWriter(base / fname, [(n, "BF16", s) for n, s in shard], {"format": "pt"})
            for name, shape in shard:
                writer.write(name, (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16))
                weight_map[name] = fname
            writer.close()
        index = {"metadata": {"total_size": params * 2}, "weight_map": weight_map}
        (base / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if not (adapter / "adapter_model.safetensors").is_file():
        from safetensors.torch import save_file

        adapter.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM", use_dora=dora,
                   base_model_name_or_path=str(base)).save_pretrained(str(adapter))  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        state = {}
        for name, shape in shapes:
            module = name.removesuffix(".weight")
            if module.split(".")[-1] in TARGETS:
                state[f"base_model.model.{module}.lora_A.weight"] = torch.randn((16, shape[1]), generator=gen) * 0.01
                state[f"base_model.model.{module}.lora_B.weight"] = torch.randn((shape[0], 16), generator=gen) * 0.01
                if dora:  # about the rows' norms (0.02 * sqrt(in)), where DoRA's training starts
                    norm = 0.02 * shape[1] ** 0.5
                    state[f"base_model.model.{module}.lora_magnitude_vector"] = (0.5 + torch.rand(shape[0], generator=gen)) * norm
        save_file(state, str(adapter / "adapter_model.safetensors"))
    if not (adapter / "lfx_tokenizer.json").is_file():
        # What training leaves beside the adapter: the run record and the persona tokenizer it wrote at its end.
        from llamafactory_ext.artifact.tokenizer_files import make_output_tokenizer_portable

        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (base / name).is_file():
                shutil.copyfile(base / name, adapter / name)
        record = {"args": {"model_name_or_path": str(base), "template": "llama3", "finetuning_type": "lora"},
                  "template": {"name": "llama3", "default_system": "", "stop_words": ["<|eot_id|>"]}}  # fmt: skip
        (adapter / "lfx_run.json").write_text(json.dumps(record))
        make_output_tokenizer_portable(adapter, base, "llama3")
    return base, adapter, params


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GB) of `cmd`, from GNU time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"})  # fmt: skip
    wall = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kb / 1e6


PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out, max_shard_size="400MB")
"""


def run_size(size: str, work: Path, dora: bool = False) -> list[dict]:
    base, adapter, params = build(size, work, dora)
    label = f"{size} DoRA" if dora else size
    rows = []
    methods = {
        "copy (floor)": lambda out: ["cp", "-r", str(base), str(out)],
        "lfx merge": lambda out: [str(BIN / "lfx"), "merge", str(adapter), "-o", str(out)],  # as merge_upload.sh runs it
        "peft merge_and_unload": lambda out: [sys.executable, "-c", PEFT_SCRIPT, str(base), str(adapter), str(out)],
        "llamafactory-cli export": lambda out: [str(BIN / "llamafactory-cli"), "export", str(_export_yaml(base, adapter, out))],
    }
    for name, make in methods.items():
        out = work / f"out-{label.replace(' ', '-')}-{name.split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = measure(make(out), work / f"log-{label.replace(' ', '-')}-{name.split()[0]}.txt")
        rows.append({"size": label, "params": params, "method": name, "wall_s": round(wall, 1), "peak_rss_gb": round(rss, 2)})
        print(f"{label:10} {name:24} {wall:7.1f} s  {rss:6.2f} GB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _export_yaml(base: Path, adapter: Path, out: Path) -> Path:
    path = out.parent / f"export-{out.name}.yaml"
    path.write_text(json.dumps({"model_name_or_path": str(base), "adapter_name_or_path": str(adapter), "template": "llama3",
                                "finetuning_type": "lora", "export_dir": str(out), "export_size": 1,
                                "export_device": "cpu", "export_legacy_format": False}))  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--dora", action="store_true", help="a DoRA adapter instead of plain LoRA")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-merge"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [row for size in args.sizes for row in run_size(size, args.work, args.dora)]
    print("\n| model | method | wall (s) | peak RSS (GB) | RSS vs peft | wall vs peft |\n|---|---|---|---|---|---|")
    for row in rows:
        peft = next(r for r in rows if r["size"] == row["size"] and r["method"].startswith("peft"))
        print(f"| {row['size']} ({row['params'] / 1e9:.2f}B) | {row['method']} | {row['wall_s']} | {row['peak_rss_gb']} | "
              f"{row['peak_rss_gb'] / peft['peak_rss_gb']:.2f} | {row['wall_s'] / peft['wall_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
