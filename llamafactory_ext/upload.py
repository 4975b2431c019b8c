"""Push a merged model or a LoRA adapter to the Hugging Face Hub with a model card.

The token comes from `HF_TOKEN` or the Hub's stored login (huggingface_hub.get_token) and is never
printed or written. Files go up with huggingface_hub's `upload_folder` (several commits for large
folders, resumes when re-run); the card is huggingface_hub's ModelCard, rendered from
cards/model_card.md.j2.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Callable

from .errors import LfxError
from .files import read_json

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CARD_TEMPLATE = Path(__file__).parent / "cards" / "model_card.md.j2"
# Training state that is not part of a model: checkpoints, optimizer shards, pickles, local notes.
IGNORE = ["checkpoint-*", "checkpoint-*/*", "global_step*", "global_step*/*", "*.pt", "*.pth", "training_args.bin",
          "README.md", ".*", "runs/*", "train.log"]  # fmt: skip
HYPERPARAMETERS = ("finetuning_type", "lora_rank", "lora_alpha", "lora_target", "cutoff_len", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_ratio", "num_train_epochs",
                   "max_steps", "bf16", "fp16", "val_size")  # fmt: skip


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise LfxError(f"--repo: '{repo_id}' is not USER/NAME")
    return repo_id


def source_folder(folder: str | Path, adapter_only: bool) -> tuple[Path, str]:
    """The folder to upload and what it holds ("merged" or "adapter")."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LfxError(f"{folder}: folder not found")
    if (folder / "adapter_config.json").is_file():
        return folder, "adapter"
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise LfxError(f"{folder}: neither a merged model (config.json + *.safetensors) nor a LoRA adapter")
    if not adapter_only:
        return folder, "merged"
    record = folder / "lfx_merge.json"
    adapter = Path(read_json(record).get("adapter", "")) if record.is_file() else None
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        raise LfxError(f"{record}: --adapter-only: the adapter this model was merged from is not recorded or gone")
    return adapter, "adapter"


def _run_info(folder: Path) -> dict[str, Any]:
    for candidate in (folder / "lfx_run.json", folder.parent / "lfx_run.json"):
        if candidate.is_file():
            data = read_json(candidate)
            return data if isinstance(data, dict) else {}
    return {}


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def build_card(folder: Path, kind: str, repo_id: str):
    """huggingface_hub ModelCard: base model, datasets, persona template and system prompt,
    hyperparameters, results, the loss plot and a usage snippet."""
    from huggingface_hub import ModelCard, ModelCardData

    run = _run_info(folder)
    args = run.get("args") or {}
    merged = read_json(folder / "lfx_merge.json") if (folder / "lfx_merge.json").is_file() else {}
    if kind == "adapter":
        base = str(read_json(folder / "adapter_config.json").get("base_model_name_or_path") or "")
    else:
        base = str(merged.get("base_model") or args.get("model_name_or_path") or "")
    template = run.get("template") or {}
    datasets = [d.strip() for d in str(args.get("dataset") or "").split(",") if d.strip()]
    hyper = [(k, _fmt(args[k])) for k in HYPERPARAMETERS if k in args]
    if run.get("zero_stage") is not None:
        hyper.append(("deepspeed", f"ZeRO-{run['zero_stage']}"))
    if run.get("world_size"):
        hyper.append(("processes", str(run["world_size"])))
    results_file = folder / "all_results.json"
    results = sorted(read_json(results_file).items()) if results_file.is_file() else []
    evaluation = eval_section(folder / "eval.json")
    hub_base = base if REPO_ID.match(base) else None
    card_data = ModelCardData(
        base_model=hub_base,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=["llama-factory", "llamafactory-ext", "lora", "persona", *([] if kind == "adapter" else ["merged"])],
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
        what="LoRA adapter" if kind == "adapter" else "Merged LoRA fine-tune",
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
    from .evaluate import SYSTEMS, overall_table

    result = read_json(path)
    if not isinstance(result, dict) or not all(isinstance(result.get(n), dict) for n in SYSTEMS):
        raise LfxError(f"{path}: field 'tuned': not an lfx eval result (run lfx eval again)")
    config = result.get("config") or {}
    return {"n": config.get("n"), "prompts": config.get("prompts"), "max_new_tokens": config.get("max_new_tokens"),
            "table": "\n".join(overall_table(result)),
            "chart": "eval.png" if (path.parent / "eval.png").is_file() else None}  # fmt: skip


def files_to_upload(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(fnmatch.fnmatch(rel, pattern) for pattern in IGNORE):
            files.append(path)
    return files


def upload(folder: str | Path, repo_id: str, *, private: bool = True, adapter_only: bool = False,
           dry_run: bool = False, echo: Callable[[str], None] = print) -> str:  # fmt: skip
    """Create the repo (private by default), upload the folder, push the card. Returns the repo URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    source, kind = source_folder(folder, adapter_only)
    card = build_card(source, kind, repo_id)
    files = files_to_upload(source)
    api = HfApi()
    url = f"{api.endpoint}/{repo_id}"
    if dry_run:
        visibility = "private" if private else "public"
        echo(f"would create {visibility} model repo {url} and upload the {kind} in {source}:")
        for path in files:
            echo(f"  {path.relative_to(source).as_posix()}  ({path.stat().st_size:,} bytes)")
        echo("  README.md  (model card below)")
        echo("--- README.md ---")
        echo(str(card))
        return url
    token = get_token()
    if not token:
        raise LfxError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (or use --dry-run)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(source), ignore_patterns=list(IGNORE),
                          commit_message=f"Upload {kind} with llamafactory-ext")  # fmt: skip
        # What ModelCard.push_to_hub does, except that its metadata check always calls huggingface.co
        # whatever HF_ENDPOINT says; upload_file checks README.md metadata at the endpoint in use.
        api.upload_file(path_or_fileobj=str(card).encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Model card from llamafactory-ext")  # fmt: skip
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise LfxError(f"upload to {repo_id} failed: HTTP {status} from {api.endpoint}") from None
    except OSError as err:  # connection refused, DNS, disk
        raise LfxError(f"upload to {repo_id} failed: {type(err).__name__}: {err}") from None
    echo(f"uploaded the {kind} to {url}")
    return url

