"""The one secrets policy: what a credential is, by key name, by shape and by what it is, for every input and output.

Inputs (recipes, overrides, presets, plain LLaMA-Factory configs, template files, dataset entries and records)
are refused when they hold one (`refuse`, `find_in_text`); records and logs written by us are scrubbed
(`scrub`, `redact`); upload refuses a file that holds one (`find_in_text`). Tokens come from the environment
(`HF_TOKEN`) or the Hub's own login (`hf auth login`), never from a file of ours.

A credential is found three ways: its key's name (`credential_key`: LLaMA-Factory's and transformers' token
arguments, and any key named like one); its shape (`SHAPES`: today's keys of the services a fine-tune meets);
and, for kinds no list knows, what it is: a value under a credential-named key in text, or a long random token,
by detect-secrets' keyword and high-entropy plugins (and its own shape plugins).

The shapes and the redactor are standard library only: a run's start (run/start.py) redacts the launcher's output
on its way to the terminal and train.log, also on a fresh pod before the package's dependencies (detect-secrets
among them) are installed; there, and wherever detect-secrets is missing, the shapes alone decide.
`python -m llamafactory_ext.secrets redact` is the same redactor as a filter (stdin to stdout).
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import Any, Iterator

from .errors import LfxError

HOW = "tokens come from the environment (HF_TOKEN) or 'hf auth login', never from a file: remove it"

# LLaMA-Factory's and transformers' credential arguments (llamafactory/hparams/model_args.py:
# hf_hub_token, ms_hub_token, om_hub_token; finetuning_args.py: swanlab_api_key; transformers
# TrainingArguments: hub_token, push_to_hub_token), and any key named like a credential.
CREDENTIAL_KEYS = frozenset({"hf_hub_token", "ms_hub_token", "om_hub_token", "hub_token", "push_to_hub_token",
                             "swanlab_api_key", "api_key", "token"})  # fmt: skip
CREDENTIAL_NAME = re.compile(r"(^|[_\-.])(token|(api|access|auth|private|client|secret)[_\-]?key)$|secret|passw(or)?d|credential",
                             re.I)  # fmt: skip


def _starting(prefix: str, rest: str, width: int = 0) -> re.Pattern:
    """A shape that starts a token (no letter, digit, '_' or '-' before `prefix`). The look back comes after the
    prefix: `re` finds a literal prefix fast, where a leading look back makes it try every position of a file."""
    width = width or len(re.sub(r"\[[^\]]*\]", ".", prefix))  # a [class] is one character
    return re.compile(prefix + r"(?<![A-Za-z0-9_\-]" + "." * width + ")" + rest)


# Shapes of today's credentials, whatever key holds them (read 2026-12, FIELD_NOTES.md).
SHAPES = (
    # W&B since SDK 0.22.3: wandb_v1_ + 27 + _ + 49 letters and digits (86 characters)
    ("a W&B API key", _starting("wandb_v1_", r"[A-Za-z0-9]{20,}_[A-Za-z0-9]{40,}")),
    # Hugging Face user tokens: hf_ + 34 letters; organisation and older tokens carry digits
    ("a Hugging Face token", _starting("hf_", r"[A-Za-z0-9]{30,}")),
    ("an OpenAI API key", _starting("sk-", r"(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}")),
    ("an Anthropic API key", _starting("sk-ant-", r"[A-Za-z0-9_\-]{20,}")),
    # OpenAI's legacy sk- + 48, Stripe's sk_live_/sk_test_, and others of the family
    ("an API key (sk-...)", _starting("sk[-_]", r"(?:[A-Za-z]+[-_])?[A-Za-z0-9_\-]{20,}")),
    ("a GitHub token", _starting("gh[pousr]_", r"[A-Za-z0-9]{30,}")),
    ("a GitHub token", _starting("github_pat_", r"[A-Za-z0-9_]{30,}")),
    ("an AWS access key", _starting("A(?:KIA|SIA|BIA|CCA)", r"[0-9A-Z]{16}(?![A-Z0-9])", 4)),
    ("a RunPod API key", _starting("rpa_", r"[A-Za-z0-9]{30,}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----")),
)
# W&B's keys before SDK 0.22.3 and SwanLab's are 40 hex. So is a commit hash: where a key names a revision,
# where the hex is a folder name (a Hub cache snapshot), and in logs and uploaded files (checksums), it is not
# taken for a key; under a credential-named key it is one anyway.
LEGACY_HEX = ("a 40-hex API key (W&B before SDK 0.22.3, SwanLab)", re.compile(r"(?<![0-9A-Za-z/])[0-9a-f]{40}(?![0-9A-Za-z])"))
REVISION_KEY = re.compile(r"revision|commit|sha", re.I)
REDACTED = "<redacted>"

# A value in text under a credential-named key: `KEY=value`, `KEY: value`, `"KEY": "value"` (quotes escaped
# too: JSON inside a JSON string); looked for around the words credential names hold (ours and detect-secrets'
# keyword plugin's), found in ASCII-lowered text.
KEY_HINT = re.compile(r"(?:key|pass|pwd|secret|contrase|token|credential)\w*[\\\"'\]]{0,3}\s*[:=]")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z_][\w.\-]*)\\?[\"']?\s*[:=]\s*\\?[\"']?(?P<value>[^\s\"',;`)\]}\\]+)")
# A long random token: letters and digits (and base64's + = - _), at least this long, above detect-secrets'
# own entropy limit for base64 strings; hex alone is a checksum or a commit (see LEGACY_HEX).
TOKEN_MIN = 24
TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{%d,}" % TOKEN_MIN)
ENTROPY_LIMIT = 4.5
NOT_SHAPES = ("IPPublicDetector", "CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector",
              "ArtifactoryDetector")  # fmt: skip
# Not a credential's value: a placeholder, or a name in code (`self.unk_token = unk_token`, `os.environ.get(`).
CODE_NAME = re.compile(r"(?=.*[_.(])[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\(?")
NOT_A_VALUE = re.compile(r"^(none|null|true|false|x+|\*+|\.+|changeme|redacted|your[_\-].*|<.*>)$|\.\.\.$", re.I)


class SecretFound(LfxError):
    """`where` holds a secret: the message names the place and the kind, never the value."""

    def __init__(self, where: str, what: str):
        self.where, self.what = where, what
        super().__init__(f"{where}: {what}; {HOW}")


def credential_key(key: str) -> bool:
    return key.lower() in CREDENTIAL_KEYS or bool(CREDENTIAL_NAME.search(key))


def shape(text: str) -> str | None:
    """The kind of the first credential of a known shape in `text` (standard library only)."""
    for what, pattern in SHAPES:
        if pattern.search(text):
            return what
    return None


@lru_cache(maxsize=1)
def _detect_secrets() -> tuple | None:
    """detect-secrets' plugins: (shape plugins, keyword plugin, base64 entropy plugin, its value filters), or
    None where it is not installed (a fresh pod's bare python)."""
    try:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.filters import heuristic
        from detect_secrets.plugins.base import RegexBasedDetector
        from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
        from detect_secrets.plugins.keyword import KeywordDetector
    except ImportError:
        return None
    # Every plugin that recognises a service's key by its shape. Not: a public IP address (no secret); the vendor
    # plugins that look for a keyword (cloudant_password=...: the keyword plugin finds those) or for any word
    # starting "AP" (Artifactory), which cost a second a vocabulary each.
    plugins = [cls() for cls in get_mapping_from_secret_type_to_class().values()
               if issubclass(cls, RegexBasedDetector) and cls.__name__ not in NOT_SHAPES]  # fmt: skip
    filters = (heuristic.is_templated_secret, heuristic.is_prefixed_with_dollar_sign, heuristic.is_sequential_string,
               heuristic.is_potential_uuid, heuristic.is_not_alphanumeric_string)  # fmt: skip
    return plugins, KeywordDetector(), Base64HighEntropyString(limit=ENTROPY_LIMIT), filters, heuristic.is_indirect_reference


def _a_value(value: str, line: str, filters, indirect) -> bool:
    """A credential's value: not a placeholder, a reference to one (`$VAR`, `{x}`, `os.environ.get(`), a name
    in code, or a path."""
    value = value.strip("\"'`")
    if len(value) < 8 or len(set(value)) < 4 or NOT_A_VALUE.search(value) or CODE_NAME.fullmatch(value):
        return False
    return not value.startswith(("/", "./", "../", "~")) and not any(f(value) for f in filters) and not indirect(line)


def _random_token(token: str, entropy, filters) -> bool:
    """A long token of letters and digits whose entropy says it was drawn at random (a path's parts apart)."""
    for part in token.split("/"):
        if len(part) < TOKEN_MIN or not re.search(r"[0-9]", part) or not re.search(r"[A-Za-z]", part):
            continue
        if re.fullmatch(r"[0-9a-fA-F\-]+", part) or any(f(part) for f in filters):  # hex: a checksum, a commit, a UUID
            continue
        if entropy.calculate_shannon_entropy(part) > entropy.entropy_limit:
            return True
    return False


def _pieces(text: str, size: int = 1 << 16, overlap: int = 1024) -> Iterator[str]:
    """`text` in overlapping pieces: a credential (far shorter than `overlap`) lies whole in one of them, and no
    pattern runs over a megabyte-long line (a vocabulary saved on one line)."""
    for start in range(0, max(len(text), 1), size):
        yield text[start : start + size + overlap]


def _around(text: str, at: int, width: int = 400) -> str:
    """The line around position `at`, at most `width` characters either side."""
    start = max(text.rfind("\n", 0, at) + 1, at - width)
    end = text.find("\n", at)
    return text[start : min(end if end >= 0 else len(text), at + width)]


def by_nature(text: str, random_tokens: bool = True) -> str | None:
    """The kind of the first credential in `text` no shape of ours names: a service's key by detect-secrets'
    shape plugins, a value under a credential-named key, a long random token (unless `random_tokens` is
    False: the strings of a binary file run into each other). None without detect-secrets."""
    found = _detect_secrets()
    if found is None:
        return None
    plugins, keyword, entropy, filters, indirect = found
    from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP

    for piece in _pieces(text):
        for plugin in plugins:
            if next(iter(plugin.analyze_string(piece)), None):
                return f"a {plugin.secret_type} (detect-secrets)"
    seen = set()
    for hint in KEY_HINT.finditer(text.translate(ASCII_LOWER)):
        line = _around(text, hint.start())
        if line in seen:
            continue
        seen.add(line)
        for match in ASSIGNMENT.finditer(line):
            if credential_key(match["key"]) and _a_value(match["value"], line, filters, indirect):
                return f"a value under the credential-named key '{match['key']}'"
        for value in keyword.analyze_string(line, CONFIG_DENYLIST_REGEX_TO_GROUP):
            if _a_value(value, line, filters, indirect):
                return "a value under a credential-named key (detect-secrets' keyword plugin)"
    if random_tokens:
        for match in TOKEN.finditer(text):
            if _random_token(match[0], entropy, filters):
                return "a long random token (an API key of a kind not listed?)"
    return None


def value_shape(value: str, key: str = "") -> str | None:
    """What kind of credential the value `value` of key `key` holds (None: not one)."""
    what = shape(value)
    if what:
        return what
    if LEGACY_HEX[1].search(value) and not REVISION_KEY.search(key):
        return LEGACY_HEX[0]
    return by_nature(value)


def find_in_text(text: str, random_tokens: bool = True) -> str | None:
    """The kind of the first credential in `text` (a file about to be uploaded, a dataset record), or None.
    A bare 40-hex string in text is a checksum or a commit, not taken for a key."""
    return shape(text) or by_nature(text, random_tokens)


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
    value that is a credential under any key. `allow_keys` are schema keys named like credentials that
    are not (a template slot's `token: <|eot_id|>`); their values are still checked."""
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


def redact(text: str, known: tuple[str, ...] = ()) -> str:
    """`text` with every credential of a known shape and every `known` secret value replaced (logs, printed
    commands; standard library only). Other 40-hex strings stay: in a log they are commits and checksums."""
    for value in known:
        text = text.replace(value, REDACTED)
    for _, pattern in SHAPES:
        text = pattern.sub(REDACTED, text)
    return text


def environment_secrets(environ: dict[str, str]) -> tuple[str, ...]:
    """The values of credential-named environment variables (HF_TOKEN, WANDB_API_KEY, VLLM_API_KEY...)."""
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
