"""What `lfx eval` evaluates: the tuned model (a merged folder, a run's output, a full fine-tune, a run folder),
its run record, the base it came from (checked to be that base), the persona's system prompt and who the persona
is (the template's `persona:` block, kept in the run record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import read_json
from ..inference.generation import ADAPTER_CONFIG, adapter_base
from ..models import NOT_A_MODEL, folder_kind, resolve
from ..persona.schema import Persona
from ..record import output_root, read_run_file, sft_origin
from ..validation import validate

# Architecture fields a --base must share with the tuned model.
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")  # fmt: skip


@dataclass
class Target:
    """The tuned model, its run record and the base it came from."""

    path: Path
    kind: str  # "merged" (a merged or fully fine-tuned model) or "adapter"
    record: dict[str, Any]
    record_path: Path
    base: Path
    system: str
    persona: Persona | None = None
    no_persona: str = ""  # why there is no persona, when there is none
    run_dir: Path | None = None  # the rendered run folder `lfx eval` was given, if it was given one


def find_model(path: str | Path) -> tuple[Path, str]:
    """A model folder or a LoRA adapter; a rendered run folder means its outputs' merged/ (else output/)."""
    path = Path(path)
    if not path.is_dir():
        raise LfxError(f"{path}: folder not found")
    roots = [path]
    if read_run_file(path) is not None:  # a run folder: its outputs may live on the pod's volume
        roots = list(dict.fromkeys([output_root(path), path]))
    for root in roots:
        for candidate in (root, root / "merged", root / "output"):
            kind = folder_kind(candidate)
            if kind is not None:
                return candidate, "adapter" if kind == "adapter" else "merged"
    raise LfxError(f"{path}: {NOT_A_MODEL}, nor a run folder with outputs")


def _config(folder: Path) -> dict[str, Any]:
    data = read_json(folder / "config.json")
    return data.get("text_config", data) if isinstance(data, dict) else {}


def check_base(model: Path, kind: str, base: Path, recorded_base: str) -> None:
    """The base must be the model the tuned one came from: the adapter's weights fit it and it has
    the architecture of the base the adapter recorded (when that is here), or the tuned model's."""
    if not (base / "config.json").is_file():
        raise LfxError(f"--base: {base}: no config.json (not a model folder)")
    if kind == "adapter":
        from ..artifact.adapter import load_adapter
        from ..artifact.merge import base_weight_map, check_match

        check_match(load_adapter(model), base, None, base_weight_map(base))
        recorded = Path(recorded_base)
        if not (recorded / "config.json").is_file():
            return  # a Hub id not cached here: the weight shapes above are what can be checked
        reference, what = _config(recorded), f"the adapter's base {recorded}"
    else:
        reference, what = _config(model), "the tuned model"
    shipped = _config(base)
    for key in SHAPE_FIELDS:
        if reference.get(key) != shipped.get(key):
            raise LfxError(f"--base: {base}: does not match {model}: field '{key}' is {shipped.get(key)!r} in the base, "
                           f"{reference.get(key)!r} in {what}")  # fmt: skip


def resolve_target(path: str | Path, base_arg: str | None) -> Target:
    model, kind = find_model(path)
    record, record_path = run_record.load(model)
    args = record["args"]
    if kind == "adapter":
        recorded = str(read_json(model / ADAPTER_CONFIG).get("base_model_name_or_path") or "")
    else:
        recorded = str(run_record.read_merge(model).get("base_model") or args.get("model_name_or_path") or "")
    try:
        origin = sft_origin(record, record_path) if kind == "merged" and not base_arg else None
    except LfxError:  # a preference round from a model lfx did not train: compared with that model
        origin = None
    if origin is not None:  # a merged preference round: compared with the base the SFT run started from
        first = origin[1].parent
        recorded = str(run_record.read_merge(first).get("base_model") or origin[0]["args"].get("model_name_or_path") or "")
    if not (base_arg or recorded):
        raise LfxError(f"{record_path}: field 'args.model_name_or_path': missing (pass --base)")
    if kind == "adapter":
        base = adapter_base(model, base_arg, record)
    else:
        base = resolve(base_arg or recorded, "--base" if base_arg else f"{record_path}: field 'args.model_name_or_path'",
                       revision=args.get("model_revision"), cache_dir=args.get("cache_dir"), hint=" (pass --base PATH)")  # fmt: skip
    if base.resolve() == model.resolve():
        raise LfxError(f"{model}: is its own base (pass --base with the model it was trained from)")
    check_base(model, kind, base, recorded)
    system = str((record.get("template") or {}).get("default_system") or "")
    if not system:
        raise LfxError(f"{record_path}: field 'template.default_system': the run's template has no persona system prompt")
    persona, why = persona_of(record, record_path)
    run_dir = Path(path) if read_run_file(path) is not None else None
    return Target(model, kind, record, record_path, base, system, persona, why, run_dir)


def persona_of(record: dict[str, Any], record_path: Path) -> tuple[Persona | None, str]:
    """The persona the run's template declares, as the run record keeps it; for a record from before lfx kept
    it, the template file of that name in templates/. (None, why) when it declares none."""
    template = record.get("template") or {}
    name = template.get("name") or record["args"].get("template") or "(none)"
    if "persona" in template:
        data, where = template["persona"], f"{record_path}: field 'template.persona'"
    else:
        from ..persona.templates import load_specs

        spec = load_specs().get(name)
        data, where = (spec.persona.model_dump() if spec and spec.persona else None), f"templates/{name}.yaml"
    if data is None:
        return None, f"the run's template '{name}' declares no persona: block (name, aliases, languages)"
    return validate(Persona, data, where), ""
