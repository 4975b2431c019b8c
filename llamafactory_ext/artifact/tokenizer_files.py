"""Tokenizer files and stop metadata of a persona model that every consumer reads the same way.

Why start from the base model's own tokenizer files instead of `tokenizer.save_pretrained`:
transformers 5 writes `tokenizer_class: TokenizersBackend`, `extra_special_tokens` as a list and
machine-local keys (`is_local`, `local_files_only`); transformers 4.x cannot load that, and it drops
`vocab.json`/`merges.txt`/`tokenizer.model` that slow tokenizers need. The base's files are what the
model was trained with (LLaMA-Factory loads them, then changes only the eos and the chat template),
and a published base loads everywhere. So we copy them and change only what the persona needs:

- the chat template LLaMA-Factory builds for the run's template (`fix_jinja_template`), written both
  as the `chat_template` key of tokenizer_config.json (TGI, Ollama's import and llama.cpp's converter
  read only that) and as chat_template.jinja (transformers 5 prefers the file), identical;
- `eos_token` = the template's stop word when the template replaces the eos (`replace_eos`), in
  tokenizer_config.json and special_tokens_map.json;
- keys transformers 5 writes that 4.x cannot read are rewritten into their 4.x form (a base saved by
  transformers 5, like our tiny test models, becomes loadable by 4.x too).

The pad token stays as the base had it: LLaMA-Factory sets pad = eos during training when the base
has none, and a published pad equal to the stop token would mask the stop token in others' fine-tunes.

Stop metadata (LLaMA-Factory issue #9338: an export that changes the eos only in the tokenizer never
stops under vLLM): `eos_token_id` of config.json and generation_config.json lists the stop word's id
first, then the base's own end-of-text ids.

If the template's stop word is not in the base vocabulary (LLaMA-Factory then adds it as a new token),
the base files cannot describe the tokenizer: the tokenizer saved by transformers is kept instead,
with the same 4.x rewrite of its config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import atomic_write_text, read_json, readable
from ..models import CONFIG_FILES, TOKENIZER_FILES, open_tokenizer, resolve

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PERSONA_RECORD = "lfx_tokenizer.json"  # what the output's persona tokenizer was built for, and its stop ids
# Written by transformers 5 from the loading machine's state; meaningless anywhere else.
MACHINE_LOCAL_KEYS = ("is_local", "local_files_only", "cache_dir", "_commit_hash", "backend")
# transformers 5's generic fast tokenizer class; transformers 4 (and 5) know it as PreTrainedTokenizerFast.
CLASS_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Tokens that end a document in the families we train (Llama-3, Qwen2/2.5, Llama-2/Mistral, Gemma): a
# model fine-tuned from a base may still emit them, so they stay stop ids beside the template's stop word.
END_OF_TEXT_TOKENS = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")


def portable_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json in the form transformers 4.x and 5.x both load."""
    config = {k: v for k, v in config.items() if k not in MACHINE_LOCAL_KEYS}
    if config.get("tokenizer_class") in CLASS_4X:
        config["tokenizer_class"] = CLASS_4X[config["tokenizer_class"]]
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x: a list of extra special tokens; 4.x expects a name -> token mapping
        del config["extra_special_tokens"]
        additional = list(config.get("additional_special_tokens") or [])
        config["additional_special_tokens"] = additional + [t for t in extra if t not in additional]
    return config


def base_tokenizer_folder(name: str | Path, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """The base model's tokenizer files: a local folder, or a Hub id (the run's revision and cache)."""
    return resolve(str(name), "base model", revision=revision, cache_dir=cache_dir,
                   files=(*TOKENIZER_FILES, *CONFIG_FILES))  # fmt: skip


def _set_token(value: Any, token: str) -> Any:
    """A special-token entry with a new content, in the entry's own form (a string or an AddedToken dict)."""
    return {**value, "content": token} if isinstance(value, dict) else token


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]


def write_persona_tokenizer(out_dir: str | Path, base: str | Path, template_name: str | None,
                            revision: str | None = None, cache_dir: str | None = None) -> list[int]:  # fmt: skip
    """Write the persona tokenizer of `template_name` on `base` into `out_dir`, replacing any tokenizer
    files there (written aside first, then each renamed into place: a kill never leaves the folder without
    tokenizer_config.json); return the stop ids (the stop word's first, then the base's end-of-text ids)."""
    out = Path(out_dir)
    base_dir = base_tokenizer_folder(base, revision, cache_dir)
    if not (base_dir / TOKENIZER_CONFIG).is_file():
        raise LfxError(f"{base_dir / TOKENIZER_CONFIG}: missing: the base model has no tokenizer")
    if out.resolve() == base_dir.resolve():
        raise LfxError(f"{out}: is the base model's own folder; write the persona tokenizer elsewhere")
    tokenizer = open_tokenizer(base_dir, "the base model's tokenizer cannot be loaded")
    vocab = tokenizer.get_vocab()
    base_eos = [tokenizer.eos_token_id, *base_end_ids(base_dir)]
    base_eos += [vocab[t] for t in END_OF_TEXT_TOKENS if t in vocab][:1]
    size = len(tokenizer)
    stop_ids: list[int] = []
    if template_name:
        from ..persona.registration import get_template

        template = get_template(template_name)
        template.fix_special_tokens(tokenizer)  # what LLaMA-Factory does before training
        template.fix_jinja_template(tokenizer)
        stop_ids = [tokenizer.convert_tokens_to_ids(word) for word in template.stop_words]
    chat_template = tokenizer.chat_template
    if not isinstance(chat_template, str):
        chat_template = None  # a dict of named templates is not something this persona wrote

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=out) as tmp:
        staged = Path(tmp) / "files"
        staged.mkdir()
        source = base_dir
        if len(tokenizer) != size:  # the stop word was added to the vocabulary: keep the saved tokenizer
            source = Path(tmp) / "saved"
            tokenizer.save_pretrained(str(source))
        config = portable_tokenizer_config(read_json(source / TOKENIZER_CONFIG))
        config.pop("chat_template", None)
        if tokenizer.eos_token is not None:
            config["eos_token"] = _set_token(config.get("eos_token"), tokenizer.eos_token)
        if chat_template is not None:
            config["chat_template"] = chat_template
        for name in TOKENIZER_FILES:
            if (source / name).is_file() and name not in (TOKENIZER_CONFIG, CHAT_TEMPLATE_FILE):
                shutil.copyfile(source / name, staged / name)
        special = staged / SPECIAL_TOKENS_MAP
        if special.is_file() and tokenizer.eos_token is not None:
            tokens = read_json(special)
            tokens["eos_token"] = _set_token(tokens.get("eos_token"), tokenizer.eos_token)
            special.write_text(json.dumps(tokens, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (staged / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if chat_template is not None:
            (staged / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
        # tokenizer_config.json last: until it is renamed, the folder keeps a whole (older) tokenizer.
        for name in sorted(TOKENIZER_FILES, key=lambda n: n == TOKENIZER_CONFIG):
            if (staged / name).is_file():
                readable(staged / name)
                os.replace(staged / name, out / name)
            elif name != TOKENIZER_CONFIG:
                (out / name).unlink(missing_ok=True)

    ids = [i for i in stop_ids if i is not None]
    for extra in (tokenizer.eos_token_id, *base_eos):
        if extra is not None and extra not in ids:
            ids.append(extra)
    return ids


def base_end_ids(base_dir: Path) -> list[int]:
    """The eos ids the base model itself declares (config.json, generation_config.json)."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        if (base_dir / name).is_file():
            data = read_json(base_dir / name)
            if isinstance(data, dict):
                ids += [i for i in _id_list(data.get("eos_token_id")) if i not in ids]
    return ids


def write_stop_ids(model_dir: str | Path, stop_ids: list[int]) -> None:
    """`eos_token_id` of config.json and generation_config.json: `stop_ids`, then any they listed already.
    A model without a generation_config.json gets one from its config."""
    model = Path(model_dir)

    def merged(value: Any) -> int | list[int]:
        ids = list(stop_ids) + [i for i in _id_list(value) if i not in stop_ids]
        return ids[0] if len(ids) == 1 else ids

    config_path = model / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if config_path.is_file():
        config["eos_token_id"] = merged(config.get("eos_token_id"))
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen_path = model / "generation_config.json"
    if gen_path.is_file():
        gen = read_json(gen_path)
    else:
        gen = {k: config[k] for k in ("bos_token_id", "pad_token_id") if config.get(k) is not None}
    gen["eos_token_id"] = merged(gen.get("eos_token_id"))
    atomic_write_text(gen_path, json.dumps(gen, indent=2, sort_keys=True) + "\n")


def make_output_tokenizer_portable(output_dir: str | Path | None, base_model: str | Path | None,
                                   template_name: str | None, revision: str | None = None,
                                   cache_dir: str | None = None) -> bool:  # fmt: skip
    """After training: replace the tokenizer LLaMA-Factory saved in the run's output folder (the adapter
    folder users load and upload) with the portable persona tokenizer. Checkpoints are left as the
    trainer wrote them: they exist to resume, and `lfx merge` of a checkpoint writes portable files.
    Returns False when the folder holds no saved tokenizer (nothing to do)."""
    if not output_dir or not base_model:
        return False
    out = Path(output_dir)
    if not (out / TOKENIZER_CONFIG).is_file():
        return False
    (out / PERSONA_RECORD).unlink(missing_ok=True)  # until the new files are whole, nothing vouches for them
    stop_ids = write_persona_tokenizer(out, base_model, template_name, revision, cache_dir)
    if (out / "config.json").is_file():  # a full fine-tune: the output folder is the model itself
        write_stop_ids(out, stop_ids)
    files = [name for name in TOKENIZER_FILES if (out / name).is_file()]
    atomic_write_text(out / PERSONA_RECORD, json.dumps({"template": template_name, "base_model": str(base_model),
                                                        "stop_ids": stop_ids, "files": files}, indent=2) + "\n")  # fmt: skip
    return True


def recorded_persona_tokenizer(folder: Path, template_name: str | None, base_model: str) -> tuple[list[str], list[int]] | None:
    """(files, stop ids) of the persona tokenizer training wrote into `folder` for this template and base, when it
    is there and whole (lfx_tokenizer.json, written after the files): `lfx merge` copies it instead of building it
    again, which needs LLaMA-Factory's template code (10 s of imports)."""
    path = folder / PERSONA_RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or record.get("template") != template_name or record.get("base_model") != str(base_model):
        return None
    files = record.get("files") or []
    if TOKENIZER_CONFIG not in files or not all((folder / name).is_file() for name in files):
        return None
    return list(files), [int(i) for i in record.get("stop_ids") or []]


def redo_output_tokenizer(output_dir: str | Path) -> str:
    """`lfx portable-tokenizer OUTPUT_DIR`: what training does at its end, from the run record (base model,
    template, revision, cache), for an output whose rewrite failed or was interrupted."""
    from .. import record as run_record

    record, path = run_record.load(output_dir)
    args = record["args"]
    template = (record.get("template") or {}).get("name") or args.get("template")
    if not make_output_tokenizer_portable(output_dir, args.get("model_name_or_path"), template, args.get("model_revision"),
                                          args.get("cache_dir")):  # fmt: skip
        raise LfxError(f"{output_dir}: no tokenizer_config.json to rewrite (training saves one with the adapter)")
    return f"rewrote the tokenizer in {output_dir} (base {args.get('model_name_or_path')}, template {template})"
