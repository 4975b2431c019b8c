"""Training entry point for every rank: `python -m llamafactory_ext.train CONFIG.yaml [key=value ...]`.

Ranks started by `llamafactory-cli train` never import this package, so our templates would not
exist there. Launch this module instead (torchrun, the deepspeed launcher, or plain python): it
registers our templates and datasets in its own process, then runs LLaMA-Factory's `run_exp`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import record as run_record
from .errors import LfxError
from .files import has_bom, read_json, read_yaml
from .models import for_loading
from .paths import datasets_dir
from .persona.dataset_entries import INFO_FILE, DatasetEntry, dataset_names, fingerprint, load_entries
from .persona.registration import register_datasets
from .secrets import refuse as refuse_secrets

USAGE = "usage: python -m llamafactory_ext.train CONFIG.yaml [key=value ...]"


def split_argv(argv: list[str]) -> tuple[str, list[str]]:
    """The config path and key=value overrides; drops the `--local_rank` the deepspeed launcher appends."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            rest.append(arg)
        i += 1
    if not rest or not rest[0].endswith((".yaml", ".yml", ".json")):
        raise LfxError(f"missing CONFIG.yaml ({USAGE})")
    for arg in rest[1:]:
        if "=" not in arg or arg.startswith("-"):
            raise LfxError(f"override '{arg}' is not key=value ({USAGE})")
    return rest[0], rest[1:]


def load_config(path: str, overrides: list[str]) -> dict[str, Any]:
    """The config file merged with command-line overrides, as LLaMA-Factory's own CLI merges them."""
    from omegaconf import OmegaConf

    data = read_json(path) if path.endswith(".json") else read_yaml(path)
    if not isinstance(data, dict):
        raise LfxError(f"{path}: expected a mapping of LLaMA-Factory arguments, got {type(data).__name__}")
    refuse_secrets(path, data)  # every rank refuses: a key in a config ends up in training_args.bin and logs
    extra = OmegaConf.to_container(OmegaConf.from_cli(overrides))
    refuse_secrets(f"{path}: override", extra)
    merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.create(extra))
    return OmegaConf.to_container(merged)


def prepare(config: dict[str, Any], config_path: str = "config") -> dict[str, Any]:
    """Register templates and datasets in this process and point the config at them.

    A `dataset_dir` that already defines a dataset (a rendered run folder's `data/` snapshot) is used
    as it is: the live `datasets/` is never compared with it, so editing the source data after
    rendering cannot break a run. Only datasets of ours that it lacks are added to it.
    """
    from llamafactory.data.template import TEMPLATES

    from .persona.registration import register_templates

    ours = register_templates()
    if config.get("model_name_or_path"):
        config["model_name_or_path"] = for_loading(str(config["model_name_or_path"]))
    template = config.get("template")
    if template is not None and template not in TEMPLATES:
        raise LfxError(
            f"{config_path}: field 'template': unknown template '{template}' "
            f"(ours: {', '.join(ours)}; or a LLaMA-Factory built-in such as llama3, qwen)"
        )

    named = [n for f in ("dataset", "eval_dataset") for n in dataset_names(config.get(f))]
    entries = load_entries(names=named)
    dataset_dir = config.get("dataset_dir")
    wanted = [n for n in named if n in entries]
    if dataset_dir is None and config.get("output_dir") and any(_bom(entries[n]) for n in wanted):
        # LLaMA-Factory's loader refuses a JSON file that starts with a UTF-8 BOM: train on a snapshot without it.
        dataset_dir = config["dataset_dir"] = str(Path(config["output_dir"]) / ".lfx_data")
    if dataset_dir is None:
        config["dataset_dir"] = str(datasets_dir())
        present: set[str] = set()
    else:
        info_path = Path(dataset_dir) / INFO_FILE
        present = set(read_json(info_path)) if info_path.exists() else set()
    missing = []
    for field_name in ("dataset", "eval_dataset"):
        for name in dataset_names(config.get(field_name)):
            if not name:
                raise LfxError(f"{config_path}: field '{field_name}': {config.get(field_name)!r} has an empty dataset name "
                               "(a stray comma?)")  # fmt: skip
            if name not in present and name not in entries:
                known = ", ".join(sorted(present | set(entries)))
                raise LfxError(f"{config_path}: field '{field_name}': unknown dataset '{name}' (known: {known})")
            if name not in present:
                missing.append(name)
    if missing:
        register_datasets(config["dataset_dir"], list(dict.fromkeys(missing)))
    return config


def _bom(entry) -> bool:
    path = entry.path
    files = [p for p in path.iterdir() if p.is_file()] if path is not None and path.is_dir() else [path] if path else []
    return any(p.is_file() and has_bom(p) for p in files)


def write_run_record(config: dict[str, Any], config_path: str | None = None) -> Path | None:
    """Rank 0 writes what `lfx merge`, `lfx eval` and the model card need into output_dir: the run's
    arguments, its template's system prompt and stop words, and, for a rendered run folder, the resolved
    recipe (LLaMA-Factory arguments plus the launch block) it was rendered from."""
    if int(os.environ.get("RANK", "0")) != 0 or not config.get("output_dir"):
        return None
    from llamafactory_ext import __version__

    from .persona.registration import get_template

    record: dict[str, Any] = {"lfx_version": __version__, "args": dict(config)}
    record["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = config.get("deepspeed")
    if isinstance(deepspeed, str) and Path(deepspeed).is_file():
        record["zero_stage"] = (read_json(deepspeed).get("zero_optimization") or {}).get("stage", 0)
    if config.get("template"):
        from .persona.templates import load_specs

        template = get_template(config["template"])
        spec = load_specs().get(config["template"])
        record["template"] = {
            "name": config["template"],
            "default_system": template.default_system,
            "stop_words": list(template.stop_words),
            "persona": spec.persona.model_dump() if spec and spec.persona else None,
        }
    if config.get("dataset_dir"):  # lfx eval rebuilds the held-out split only from this very data
        folder = Path(config["dataset_dir"])
        info = read_json(folder / INFO_FILE) if (folder / INFO_FILE).is_file() else {}
        names = dict.fromkeys(n for f in ("dataset", "eval_dataset") for n in dataset_names(config.get(f)) if n in info)
        record["data_sha256"] = {name: fingerprint(DatasetEntry(name, info[name], folder)) for name in names}
    if config_path:
        from .record import read_run_file

        rendered = read_run_file(Path(config_path).parent)  # a run folder's run.json: the run's name and id
        if rendered:
            record["run"] = {"name": rendered.get("name"), "run_id": rendered.get("run_id")}
    recipe = Path(config_path).parent / "recipe.yaml" if config_path else None
    if recipe is not None and recipe.is_file():
        record["recipe"] = read_yaml(recipe)
    return run_record.write(config["output_dir"], record)


def portable_tokenizer(config: dict[str, Any]) -> None:
    """Rank 0, after training: the output's tokenizer in the form every consumer loads. A finished training
    never fails here: a problem is a warning with the command that redoes it."""
    from .artifact.tokenizer_files import make_output_tokenizer_portable

    try:
        make_output_tokenizer_portable(config.get("output_dir"), config.get("model_name_or_path"), config.get("template"),
                                       config.get("model_revision"), config.get("cache_dir"))  # fmt: skip
    except Exception as err:  # noqa: BLE001 (training is done; the adapter is safe)
        print(f"warning: training finished, but the tokenizer in {config.get('output_dir')} could not be made portable "
              f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); redo it with: lfx portable-tokenizer "
              f"{config.get('output_dir')}", file=sys.stderr)  # fmt: skip


def _finish() -> None:
    """Tear down cleanly. Under a multi-process launcher, exit right away once everything is flushed:
    measured here, interpreter teardown after a gloo run under the deepspeed launcher died with SIGABRT."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    try:
        path, overrides = split_argv(sys.argv[1:] if argv is None else argv)
        config = prepare(load_config(path, overrides), path)
        write_run_record(config, path)
    except LfxError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    from llamafactory.train.tuner import run_exp

    run_exp(config)
    if int(os.environ.get("RANK", "0")) == 0:
        portable_tokenizer(config)
    _finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
