"""`lfx export`: a persona model (merged folder, run folder or adapter) to one GGUF, and an Ollama Modelfile.

The GGUF comes from llama.cpp's own converter (llamafactory_ext.llamacpp_converter: pinned, pure
Python, run in its own process); an adapter is first merged shard-wise (llamafactory_ext.merge) into
a temporary folder. Then the GGUF is read back and checked: its chat template is the persona's,
byte for byte the one in tokenizer_config.json and chat_template.jinja; its eos is the stop token;
a byte-level BPE tokenizer became llama.cpp's `gpt2` vocabulary (a `tokenizer.json` saying
`byte_fallback: true` makes the converter take it for a SentencePiece `llama` one, and llama.cpp
then aborts in `byte_to_token` on the first prompt). `--format ollama` adds a Modelfile
(llamafactory_ext.modelfile). Every input is checked before the conversion; everything is written
into a temporary folder next to OUT and renamed at the end, so bad input or a failure writes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import atomic_write_text, check_replaceable, dump_json, read_json, refuse_overwrite, staged_folder
from ..models import hub_id, local_folder, open_tokenizer

FORMATS = ("gguf", "ollama")
OUTTYPES = ("f16", "bf16", "q8_0")  # what llama.cpp's Python converter writes (f32 and ternary types aside)
BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # for the progress bar's estimate
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
EXPORT_RECORD = "lfx_export.json"
COMMAND = "lfx export"  # what its output folder's marker names: --force replaces only a folder it wrote
CONVERT_TIMEOUT_S = 6 * 3600


@dataclass
class Source:
    model: Path  # a merged model folder (after merging, for an adapter)
    kind: str  # "merged" or "adapter"
    given: Path  # what the user named
    record: dict[str, Any]  # lfx_run.json, {} when there is none
    base_name: str  # the base model as recorded (Hub id or folder)
    template: str | None


def check_options(fmt: str, outtype: str) -> str:
    if fmt not in FORMATS:
        raise LfxError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
    value = outtype.lower()
    if value in OUTTYPES:
        return value
    if value.startswith(("q2_", "q3_", "q4_", "q5_", "q6_", "iq")):
        raise LfxError(f"--outtype: '{outtype}' is a quantization llama.cpp's Python converter cannot write "
                       f"(it writes {', '.join(OUTTYPES)}); export q8_0 or f16 and quantize it with "
                       "'ollama create NAME -f Modelfile --quantize q4_K_M' or llama.cpp's compiled llama-quantize")  # fmt: skip
    raise LfxError(f"--outtype: '{outtype}' is not one of {', '.join(OUTTYPES)}")


def _json(path: Path) -> dict[str, Any]:
    data = read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def resolve_source(target: str | Path) -> Source:
    from ..evaluation.targets import find_model

    given = Path(target)
    model, kind = find_model(given)
    record = run_record.load(model, required=False)[0]
    if kind == "adapter":
        base_name = str(_json(model / "adapter_config.json").get("base_model_name_or_path") or "")
        template = (record.get("template") or {}).get("name")
    else:
        merge_record = run_record.read_merge(model)
        base_name = str(merge_record.get("base_model") or (record.get("args") or {}).get("model_name_or_path") or "")
        template = merge_record.get("template") or (record.get("template") or {}).get("name")
    return Source(model, kind, given, record, base_name, template)


def check_tokenizer_files(folder: Path) -> None:
    if not (folder / "tokenizer_config.json").is_file() or not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise LfxError(f"{folder}: no tokenizer files (tokenizer_config.json and one of {', '.join(TOKENIZER_FILES)}); "
                       "a GGUF carries the tokenizer: export the merged folder lfx merge writes")  # fmt: skip


def persona_template(folder: Path) -> str:
    """The chat template the GGUF must carry, as the converter reads it: tokenizer_config.json's `chat_template`,
    else chat_template.jinja (a folder transformers 5 saved); when both exist they must be the same text."""
    config = _json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    text = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    if template is not None and not isinstance(template, str):
        raise LfxError(f"{folder}/tokenizer_config.json: field 'chat_template': a list of named templates; a persona "
                       "model has one (merge the run with lfx merge)")  # fmt: skip
    if template is None and text is None:
        raise LfxError(f"{folder}/tokenizer_config.json: field 'chat_template': missing (and no chat_template.jinja): "
                       "merge the run with lfx merge, which writes the persona template")  # fmt: skip
    if template is not None and text is not None and text != template:
        raise LfxError(f"{jinja}: differs from tokenizer_config.json's chat_template (transformers 5 reads the file, "
                       "llama.cpp and Ollama the key): merge again with lfx merge")  # fmt: skip
    return template if template is not None else text


def check_architecture(config_path: Path, supported: set[str], converter: str) -> str:
    config = _json(config_path)
    archs = config.get("architectures") or []
    if not archs:
        raise LfxError(f"{config_path}: field 'architectures': missing (llama.cpp's converter picks its model by it)")
    if archs[0] not in supported:
        near = sorted(a for a in supported if a.lower()[:5] == archs[0].lower()[:5])[:4]
        hint = f"; close: {', '.join(near)}" if near else ""
        raise LfxError(f"{config_path}: field 'architectures': '{archs[0]}' is not supported by llama.cpp's converter "
                       f"({converter}){hint}")  # fmt: skip
    return archs[0]


def _front_matter(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", path.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    try:
        data = yaml.safe_load(match.group(1)) if match else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def describe_base(base_name: str) -> tuple[list[dict[str, str]], str | None]:
    """general.base_models entries and the license, from the base's fetch record or model card."""
    folder = local_folder(base_name) if base_name else None
    fetched = (_json(folder / "lfx_fetch.json").get("source") or {}) if folder else {}
    hub = hub_id(folder or base_name) if base_name else None
    license_ = fetched.get("license") or (_front_matter(folder / "README.md").get("license") if folder else None)
    if hub:
        org, name = hub.split("/", 1)
        entry = {"name": name, "organization": org, "repo_url": f"https://huggingface.co/{hub}"}
    else:
        entry = {"name": Path(base_name).name or base_name}
    return ([entry] if base_name else []), (str(license_) if license_ else None)


def _stage(model: Path, stage: Path, license_: str | None) -> None:
    """The converter's input: the model's files by symlink, and a model card carrying the license (the
    converter takes general.license only from README.md's front matter, not from its --metadata file)."""
    stage.mkdir(parents=True)
    for item in model.iterdir():
        if item.name != "README.md":
            (stage / item.name).symlink_to(item.resolve())
    card = f"---\nlicense: {json.dumps(license_)}\n---\n" if license_ else ""
    (stage / "README.md").write_text(card, encoding="utf-8")


def _weights_numel(model: Path) -> int:
    from ..artifact.shards import read_header

    total = 0
    for shard in model.glob("*.safetensors"):
        for entry in read_header(shard).entries:
            count = 1
            for dim in entry.shape:
                count *= dim
            total += count
    return total


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"Error|error|not supported|Exception", line) and not line.startswith("File "):
            return line[-400:]
    return (lines or ["no output"])[-1][-400:]


def convert(converter: Path, stage: Path, outfile: Path, outtype: str, name: str, metadata: dict, progress: bool) -> None:
    """Run llama.cpp's converter; a progress bar follows the GGUF's size against the expected size."""
    from tqdm.auto import tqdm

    from .converter import command, pin

    meta_path = outfile.parent / "gguf-metadata.json"
    atomic_write_text(meta_path, dump_json(metadata))
    cmd, env = command(converter, stage, outfile, outtype, name, meta_path)
    log = outfile.parent / "convert.log"
    expected = max(1, int(_weights_numel(stage) * BYTES_PER_WEIGHT[outtype]))
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=converter)
        # On a terminal only (disable=None), and erased when done: the error line, if any, stays the only line.
        bar = tqdm(total=expected, unit="B", unit_scale=True, desc=f"converting to GGUF {outtype}", delay=2,
                   leave=False, disable=None if progress else True)  # fmt: skip
        deadline = time.monotonic() + CONVERT_TIMEOUT_S
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise LfxError(f"llama.cpp's converter ({pin()}): no result in {CONVERT_TIMEOUT_S} s")
                size = outfile.stat().st_size if outfile.exists() else 0
                bar.update(min(size, expected) - bar.n)
                time.sleep(0.5)
            if proc.returncode == 0:
                bar.update(expected - bar.n)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            bar.close()
    meta_path.unlink()
    if proc.returncode != 0 or not outfile.is_file():
        raise LfxError(f"{stage.name}: llama.cpp's converter ({pin()}) failed (exit {proc.returncode}): {_last_error(log)}")
    log.unlink()


GGUF_KEYS = ("general.name", "general.license", "general.base_model.count", "general.base_model.0.name",
             "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.add_bos_token", "tokenizer.ggml.model", "tokenizer.ggml.pre")  # fmt: skip


def _byte_level_bpe(folder: Path) -> dict[str, Any] | None:
    """tokenizer.json's model when it is a byte-level BPE (GPT-2 style), else None."""
    data = _json(folder / "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        return None
    parts = [data.get("pre_tokenizer") or {}, data.get("decoder") or {}]
    kinds = {p.get("type") for part in parts for p in [part, *(part.get("pretokenizers") or []), *(part.get("decoders") or [])]}
    return model if "ByteLevel" in kinds else None


def verify_gguf(path: Path, model: Path, template: str, tokenizer) -> dict[str, Any]:
    """The GGUF carries the persona: its template, its stop token, the vocabulary type llama.cpp can run."""
    from .converter import gguf_fields

    fields = gguf_fields(path, GGUF_KEYS)
    tokenizer_json = model / "tokenizer.json"
    bpe = _byte_level_bpe(model)
    if bpe is not None and fields["tokenizer.ggml.model"] != "gpt2":
        cause = (" because it says byte_fallback: true (set it to false, as the original model ships it; "
                 "lfx fetch-model writes it so)") if bpe.get("byte_fallback") else ""  # fmt: skip
        raise LfxError(f"{tokenizer_json}: field 'model.byte_fallback': llama.cpp's converter read this byte-level BPE "
                       f"tokenizer as a '{fields['tokenizer.ggml.model']}' vocabulary{cause}; llama.cpp would fail "
                       "to tokenize the first prompt")  # fmt: skip
    if fields["tokenizer.chat_template"] != template:
        raise LfxError(f"{path.name}: tokenizer.chat_template differs from {model}/tokenizer_config.json's chat_template")
    stop = tokenizer.eos_token_id
    if fields["tokenizer.ggml.eos_token_id"] != stop:
        raise LfxError(f"{path.name}: tokenizer.ggml.eos_token_id is {fields['tokenizer.ggml.eos_token_id']}, the stop "
                       f"token {tokenizer.eos_token!r} is {stop}")  # fmt: skip
    return fields


def default_out(source: Source) -> Path:
    """runs/NAME/merged -> runs/NAME/gguf; any other folder X -> X-gguf beside it."""
    model = source.given if source.given.resolve() != source.model.resolve() else source.model
    if model.resolve() != source.model.resolve():  # a run folder: its gguf/ inside
        return model / "gguf"
    if model.name in ("merged", "output"):
        return model.parent / "gguf"
    return model.parent / f"{model.name}-gguf"


def num_ctx(source: Source, model: Path) -> int:
    """The run's cutoff_len (what the persona was trained on), within the model's context."""
    from ..record import trained_context

    return trained_context(source.record, model)


def export(target: str | Path, fmt: str = "gguf", outtype: str = "f16", out_dir: str | Path | None = None,
           force: bool = False, base: str | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Export `target` to `out_dir`; returns what was written (the export record)."""
    from ..record import model_name
    from . import converter as llamacpp_converter

    outtype = check_options(fmt, outtype)
    source = resolve_source(target)
    out = Path(out_dir) if out_dir else default_out(source)
    refuse_overwrite(out, [source.model], "export")  # never the model, nor a folder above it
    if out.resolve() == source.given.resolve() or out.resolve() in source.given.resolve().parents:
        raise LfxError(f"{out}: the export would overwrite {source.given}; choose another output folder")
    check_replaceable(out, COMMAND, force)
    if source.kind == "adapter":
        from ..artifact.merge import resolve_base

        base_name = base or source.base_name
        if not base_name:
            raise LfxError(f"{source.model}/adapter_config.json: field 'base_model_name_or_path': empty (pass --base)")
        where = "--base" if base else f"{source.model / 'adapter_config.json'}: field 'base_model_name_or_path'"
        config_path = resolve_base(base_name, source.record, where) / "config.json"
        source.base_name = base_name
    else:
        check_tokenizer_files(source.model)
        persona_template(source.model)
        config_path = source.model / "config.json"
    if fmt == "ollama" and not source.template:
        raise LfxError(f"{source.model}: no persona template recorded (lfx_merge.json or lfx_run.json 'template'): "
                       "the Ollama TEMPLATE is written from it; --format gguf writes the GGUF alone")  # fmt: skip
    converter = llamacpp_converter.converter_dir()
    check_architecture(config_path, llamacpp_converter.supported_architectures(converter), llamacpp_converter.pin())
    name = model_name(source.model)

    with staged_folder(out, COMMAND, force) as tmp:
        model = source.model
        if source.kind == "adapter":
            from ..artifact.merge import merge

            model = merge(source.model, tmp / "merged", base_arg=base, progress=progress and sys.stderr.isatty())
            check_tokenizer_files(model)
        template = persona_template(model)
        result = _write(source, model, template, tmp, name, fmt, outtype, converter, progress)
        shutil.rmtree(tmp / "merged", ignore_errors=True)
    result["out"] = str(out)
    return result


def _write(source: Source, model: Path, template: str, tmp: Path, name: str, fmt: str, outtype: str,
           converter: Path, progress: bool) -> dict[str, Any]:  # fmt: skip
    from .. import __version__
    from .converter import pin

    tokenizer = open_tokenizer(model)
    base_models, base_license = describe_base(source.base_name)
    license_ = _front_matter(model / "README.md").get("license") or base_license  # the model's own card first
    stage = tmp / "stage" / name
    _stage(model, stage, license_)
    gguf_name = f"{name}-{outtype}.gguf"
    metadata = {"general.base_models": base_models} if base_models else {}
    try:
        convert(converter, stage, tmp / gguf_name, outtype, name, metadata, progress)
    finally:
        shutil.rmtree(tmp / "stage", ignore_errors=True)
    fields = verify_gguf(tmp / gguf_name, model, template, tokenizer)
    record: dict[str, Any] = {
        "lfx_version": __version__, "converter": pin(), "source": str(source.given.resolve()), "kind": source.kind,
        "outtype": outtype, "gguf": gguf_name, "template": source.template,
        "gguf_metadata": {k: v for k, v in fields.items() if k != "tokenizer.chat_template"},
    }  # fmt: skip
    if fmt == "ollama":
        from .modelfile import write_modelfile

        record.update(write_modelfile(tmp, source.template, name, gguf_name, tokenizer, model, fields["tokenizer.ggml.add_bos_token"],
                                      num_ctx(source, model)))  # fmt: skip
    atomic_write_text(tmp / EXPORT_RECORD, dump_json(record))
    return record
