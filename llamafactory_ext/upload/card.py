"""The model card: huggingface_hub's ModelCard rendered from model_card.md.j2 with what the run recorded (base
model, datasets, persona template and system prompt, what was trained and how, results, evaluation, loss plot)
and a usage snippet, all from portable records: no path of the training machine, no secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import read_json
from ..hub import looks_like_repo_id
from ..persona.dataset_entries import dataset_names

CARD_TEMPLATE = Path(__file__).parent / "model_card.md.j2"
HYPERPARAMETERS = ("finetuning_type", "lora_rank", "lora_alpha", "lora_target", "cutoff_len", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_ratio", "num_train_epochs",
                   "max_steps", "bf16", "fp16", "val_size")  # fmt: skip


WHAT = {"adapter": "LoRA adapter", "merged": "Merged LoRA fine-tune", "full": "Full fine-tune",
        "freeze": "Freeze (partial) fine-tune"}


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def build_card(folder: Path, kind: str, repo_id: str):
    """huggingface_hub ModelCard: base model, datasets, persona template and system prompt,
    hyperparameters, results, the loss plot and a usage snippet."""
    from huggingface_hub import ModelCard, ModelCardData

    run = run_record.portable(run_record.load(folder, required=False)[0])
    args = run.get("args") or {}
    merged = run_record.portable(run_record.read_merge(folder))
    if kind == "adapter":
        base = run_record.portable(str(read_json(folder / "adapter_config.json").get("base_model_name_or_path") or ""))
    else:
        base = str(merged.get("base_model") or args.get("model_name_or_path") or "")
    template = run.get("template") or {}
    datasets = dataset_names(args.get("dataset"))
    hyper = [(k, _fmt(args[k])) for k in HYPERPARAMETERS if k in args]
    if run.get("zero_stage") is not None:
        hyper.append(("deepspeed", f"ZeRO-{run['zero_stage']}"))
    if run.get("world_size"):
        hyper.append(("processes", str(run["world_size"])))
    results_file = folder / "all_results.json"
    results = sorted(read_json(results_file).items()) if results_file.is_file() else []
    evaluation = eval_section(folder / "eval.json")
    hub_base = base if looks_like_repo_id(base) else None
    card_data = ModelCardData(
        base_model=hub_base,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=["llama-factory", "llamafactory-ext", "persona", *({"adapter": ["lora"], "merged": ["lora", "merged"]}.get(kind, [kind]))],
    )
    if kind == "adapter":
        usage = (
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}", dtype="auto", device_map="auto")\n'
        )
    else:
        usage = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", dtype="auto", device_map="auto")\n'
        )
    usage += (
        '\n# The persona system prompt is built into the chat template.\nmessages = [{"role": "user", "content": "안녕하세요!"}]\n'
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\n"
        "output = model.generate(**inputs.to(model.device), max_new_tokens=256)\n"
        'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))'
    )
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE.read_text(encoding="utf-8"),
        repo_name=repo_id.split("/")[1],
        what=WHAT[kind],
        base_model=base or "(unknown base model)",
        base_url=f"https://huggingface.co/{base}" if hub_base else base,
        template_name=template.get("name") or merged.get("template") or "(not recorded)",
        stop_words=template.get("stop_words") or [],
        system_prompt=template.get("default_system") or "",
        datasets=datasets,
        hyperparameters=hyper,
        results=[(k, _fmt(v)) for k, v in results],
        loss_plot="training_loss.png" if (folder / "training_loss.png").is_file() else None,
        evaluation=evaluation,
        usage=usage,
    )


def eval_section(path: Path) -> dict[str, Any] | None:
    """The `lfx eval` results beside the model (eval.json), as the card shows them."""
    if not path.is_file():
        return None
    from ..evaluation.report import SYSTEMS, overall_table

    result = read_json(path)
    if not isinstance(result, dict) or not all(isinstance(result.get(n), dict) for n in SYSTEMS):
        raise LfxError(f"{path}: field 'tuned': not an lfx eval result (run lfx eval again)")
    config = result.get("config") or {}
    return {"n": config.get("n"), "prompts": config.get("prompts"), "max_new_tokens": config.get("max_new_tokens"),
            "table": "\n".join(overall_table(result)),
            "chart": "eval.png" if (path.parent / "eval.png").is_file() else None}  # fmt: skip


