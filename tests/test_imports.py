"""The import graph: layers that only import downward (or within their own layer), and no circle, between
packages or between modules. Read from the source (every import, also those inside functions), in milliseconds."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llamafactory_ext"

# Bottom first. A unit is a top-level module or subpackage of llamafactory_ext.
LAYERS = [
    # the shared contract every command uses: errors, files, secrets, paths, the Hub's rules, model resolution,
    # the run record and where a run's outputs are, the pod a run may stop
    {"errors", "paths", "files", "secrets", "hub", "validation", "pypi", "models", "record", "pod"},
    {"persona", "recipe", "tiny"},  # what a run is made of: templates, datasets, recipes
    {"preflight", "inference", "artifact"},  # checks, generation, model files
    # the commands' own work (vllm_args: run by vLLM's python for serve, imports nothing of ours)
    {"evaluation", "export", "upload", "run", "serve", "vllm_args", "fetch", "train"},
    {"preference"},  # the preference round: pairs from the tuned model's failures, judged by evaluation's judge
    {"cli", "__main__", "__init__"},
]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package that `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "llamafactory_ext":
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import record`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "llamafactory_ext")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(name, path) if t in modules and t != name} for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    return next(n for n, layer in enumerate(LAYERS) if unit in layer)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    return next((found for node in sorted(graph) if node not in state and (found := visit(node))), None)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_imports_only_go_down_or_sideways():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets
              if _unit(m) != _unit(t) and _layer(_unit(t)) > _layer(_unit(m))]  # fmt: skip
    assert not upward, upward


def test_no_circle_between_packages():
    units: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    assert _cycle(units) is None, _cycle(units)


def test_no_circle_between_modules():
    graph = {m: {t for t in targets if not (_modules()[t].name == "__init__.py" and m.startswith(t + "."))}
             for m, targets in _graph().items()}  # fmt: skip
    assert _cycle(graph) is None, _cycle(graph)


def test_the_checker_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# Modules of the package that another environment's python runs, never lfx's (its libraries are that one's).
RUN_ELSEWHERE = {"llamafactory_ext.vllm_args"}  # vLLM's python, for `lfx serve` (its docstring says so)


def _third_party_imports() -> set[str]:
    """Top-level modules the package imports itself, anywhere in its source, that are neither ours nor the
    standard library's."""
    import sys

    found = set()
    for name, path in _modules().items():
        if name in RUN_ELSEWHERE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
    return {m for m in found if m != "llamafactory_ext" and m not in sys.stdlib_module_names}


def test_every_library_the_package_imports_is_declared():
    """pyproject.toml names every distribution the package imports itself, not only those it gets through
    LLaMA-Factory (an install without them, or with another major version, would fail at the first use)."""
    from importlib.metadata import packages_distributions

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {canonicalize_name(Requirement(r).name) for r in requirements}
    owners = packages_distributions()
    imported = _third_party_imports()
    assert {"torch", "pydantic", "safetensors", "numpy", "yaml"} <= imported  # the scan sees what the code uses
    undeclared = {m: owners.get(m) for m in imported if not {canonicalize_name(d) for d in owners.get(m, [])} & declared}
    assert not undeclared, undeclared
