"""The one secrets policy: what a credential is, by key name and by value shape, for every input and output.

Inputs (recipes, overrides, presets, plain LLaMA-Factory configs, template files, dataset entries) are
refused when they hold one (`refuse`); records and logs written by us are scrubbed (`scrub`, `redact`);
upload skips files that hold one (`find_in_text`). Tokens come from the environment (`HF_TOKEN`) or the
Hub's own login (`hf auth login`), never from a file of ours.

Standard library only: `train_sft.sh --background` pipes its log through `python -m
llamafactory_ext.secrets redact` before the package's dependencies are installed.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterator

from .errors import LfxError

HOW = "tokens come from the environment (HF_TOKEN) or 'hf auth login', never from a file: remove it"

# LLaMA-Factory's and transformers' credential arguments (llamafactory/hparams/model_args.py:
# hf_hub_token, ms_hub_token, om_hub_token; finetuning_args.py: swanlab_api_key; transformers
# TrainingArguments: hub_token, push_to_hub_token), and any key named like a credential.
CREDENTIAL_KEYS = frozenset({"hf_hub_token", "ms_hub_token", "om_hub_token", "hub_token", "push_to_hub_token",
                             "swanlab_api_key", "api_key", "token"})  # fmt: skip
CREDENTIAL_NAME = re.compile(r"(^|[_\-.])(token|api[_\-]?key|access[_\-]?key)$|secret|passw(or)?d|credential", re.I)

# Shapes of real credentials, whatever key holds them. Hugging Face user tokens are "hf_" + 34 letters
# (no digits); organisation/API tokens also carry digits. OpenAI/Anthropic/Stripe-style "sk-"/"sk_";
# GitHub "ghp_" and friends, fine-grained "github_pat_"; 40-hex keys are what W&B and SwanLab loggers use.
SHAPES = (
    ("a Hugging Face token", re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")),
    ("an API key (sk-...)", re.compile(r"(?<![A-Za-z0-9])sk[-_](?:[A-Za-z]+[-_])?[A-Za-z0-9_\-]{20,}")),
    ("a GitHub token", re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("an AWS access key", re.compile(r"(?<![A-Z0-9])AKIA[0-9A-Z]{16}(?![A-Z0-9])")),
    ("a 40-hex API key", re.compile(r"(?<![0-9A-Fa-f])[0-9a-f]{40}(?![0-9A-Fa-f])")),
)
# A commit hash is 40 hex too: keys that name a revision hold one legitimately.
REVISION_KEY = re.compile(r"revision|commit|sha", re.I)
REDACTED = "<redacted>"


class SecretFound(LfxError):
    """`where` holds a secret: the message names the place and the kind, never the value."""

    def __init__(self, where: str, what: str):
        self.where, self.what = where, what
        super().__init__(f"{where}: {what}; {HOW}")


def value_shape(value: str, key: str = "") -> str | None:
    """What kind of credential `value` looks like (None: not one)."""
    for what, pattern in SHAPES:
        if what == "a 40-hex API key" and REVISION_KEY.search(key):
            continue
        if pattern.search(value):
            return what
    return None


def credential_key(key: str) -> bool:
    return key.lower() in CREDENTIAL_KEYS or bool(CREDENTIAL_NAME.search(key))


def walk(data: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, last key, value) of every leaf of nested mappings and lists."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{path}.{key}" if path else str(key)
            yield from walk(value, name) if isinstance(value, (dict, list, tuple)) else [(name, str(key), value)]
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            name = f"{path}[{i}]"
            key = path.rsplit(".", 1)[-1].split("[", 1)[0]
            yield from walk(value, name) if isinstance(value, (dict, list, tuple)) else [(name, key, value)]


def find(data: Any, allow_keys: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The first (field, kind) in `data` that holds a secret: a credential-named key with any value, or a
    value of a credential's shape under any key. `allow_keys` are schema keys named like credentials
    that are not (a template slot's `token: <|eot_id|>`); their values are still checked by shape."""
    for field, key, value in walk(data):
        if isinstance(value, bool) or value is None or value == "":
            continue
        if credential_key(key) and key not in allow_keys:
            return field, f"'{key}' is a credential"
        if isinstance(value, str):
            what = value_shape(value, key)
            if what:
                return field, f"holds what looks like {what}"
    for field, key, _ in _keys(data):  # a secret used as a key (a mapping keyed by token)
        what = value_shape(key)
        if what:
            return field, f"key looks like {what}"
    return None


def _keys(data: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{path}.{key}" if path else str(key)
            yield name, str(key), value
            yield from _keys(value, name)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from _keys(value, f"{path}[{i}]")


def refuse(where: str, data: Any, allow_keys: tuple[str, ...] = ()) -> None:
    """Raise SecretFound (one line: file and field, never the value) when `data` holds a secret."""
    found = find(data, allow_keys)
    if found:
        field, what = found
        raise SecretFound(f"{where}: field '{field}'", what)


def find_in_text(text: str) -> str | None:
    """The kind of the first credential-shaped string in `text` (a file about to be uploaded), or None."""
    for what, pattern in SHAPES:
        if what != "a 40-hex API key" and pattern.search(text):
            return what
    return None


def redact(text: str, known: tuple[str, ...] = ()) -> str:
    """`text` with every credential-shaped string and every `known` secret value replaced (logs, printed
    commands). Other 40-hex strings stay: in a log they are mostly commit hashes and checksums."""
    for value in known:
        text = text.replace(value, REDACTED)
    for what, pattern in SHAPES:
        if what != "a 40-hex API key":
            text = pattern.sub(REDACTED, text)
    return text


def environment_secrets(environ: dict[str, str]) -> tuple[str, ...]:
    """The values of credential-named environment variables (HF_TOKEN, SWANLAB_API_KEY, WANDB_API_KEY...)."""
    return tuple(sorted({v for k, v in environ.items() if credential_key(k) and len(v) >= 8}, key=len, reverse=True))


def scrub(data: Any) -> Any:
    """A copy of `data` for a record: credential-named keys dropped, credential-shaped values redacted."""
    if isinstance(data, dict):
        return {k: scrub(v) for k, v in data.items() if not (credential_key(str(k)) and v not in (None, ""))}
    if isinstance(data, list):
        return [scrub(v) for v in data]
    if isinstance(data, tuple):
        return tuple(scrub(v) for v in data)
    if isinstance(data, str):
        return redact(data)
    return data


def main(argv: list[str]) -> int:
    """`python -m llamafactory_ext.secrets redact`: copy stdin to stdout, line by line, redacted (credential
    shapes, and the values of this process's credential-named environment variables)."""
    if argv != ["redact"]:
        print("usage: python -m llamafactory_ext.secrets redact < IN > OUT", file=sys.stderr)
        return 2
    import os

    known = environment_secrets(dict(os.environ))
    for line in sys.stdin:
        sys.stdout.write(redact(line, known))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
