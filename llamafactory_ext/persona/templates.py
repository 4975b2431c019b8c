"""Persona chat templates declared as YAML in templates/: read and validated, without torch or LLaMA-Factory.

A template file names a LLaMA-Factory base template, a default system prompt, overrides of the
base's fields, and who the persona is (`persona:` name, aliases, languages; `lfx eval` probes its identity).
`persona.registration` adds a derived copy of the base to LLaMA-Factory's registry under the file's name;
`persona.prompt_layout` lays conversations out with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_yaml
from ..paths import templates_dir
from ..secrets import refuse as refuse_secrets
from ..validation import validate
from .schema import Persona, TemplateFile


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    base: str
    path: Path
    default_system: str = ""
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    persona: Persona | None = None


def load_spec(path: str | Path) -> TemplateSpec:
    """Read and validate one template file (schema: persona.schema.TemplateFile)."""
    path = Path(path)
    data = read_yaml(path)
    refuse_secrets(str(path), data, allow_keys=("token",))  # a slot's {token: <|eot_id|>} names a special token
    spec = validate(TemplateFile, data, str(path), missing={"name": " (the template's name, its file name)",
                                                           "base": " (a LLaMA-Factory built-in template)"})  # fmt: skip
    if path.stem != spec.name:
        raise LfxError(f"{path}: field 'name': '{spec.name}' must match the file name '{path.stem}'")
    return TemplateSpec(name=spec.name, base=spec.base, path=path, default_system=spec.default_system,
                        description=spec.description, overrides=spec.overrides.model_dump(exclude_none=True),
                        persona=spec.persona)  # fmt: skip


def without_system_prompt(spec: TemplateSpec) -> str | None:
    """The one-line warning for a persona template whose system prompt is empty (the persona then lives in the
    data alone, and `lfx eval`'s prompted base is the plain base); None when it has one."""
    if spec.default_system.strip():
        return None
    return (f"{spec.path}: field 'default_system': empty: template '{spec.name}' has no persona system prompt, so the "
            "model trains and answers without one (write the persona's prompt there)")  # fmt: skip


def load_specs(directory: str | Path | None = None) -> dict[str, TemplateSpec]:
    """All template files in `directory` (default: templates/), by name."""
    directory = Path(directory) if directory else templates_dir()
    if not directory.is_dir():
        raise LfxError(f"{directory}: template folder not found")
    specs: dict[str, TemplateSpec] = {}
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        spec = load_spec(path)
        specs[spec.name] = spec
    return specs


def describe_persona(persona: Persona | None) -> str:
    """One line for `lfx templates`: who the persona is, or that the template declares nobody."""
    if persona is None:
        return "none declared (no persona: block; lfx eval skips its identity metric)"
    return f"{persona.name} (also {', '.join(persona.aliases) or 'no alias'}; languages {', '.join(persona.languages)})"
