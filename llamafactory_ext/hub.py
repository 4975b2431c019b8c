"""The Hugging Face Hub rules every command shares: repo ids, the token, offline mode (huggingface_hub's own)."""

from __future__ import annotations

import os

from .errors import LfxError


def repo_id_problem(repo_id: object) -> str | None:
    """Why `repo_id` is not a Hub model repo id USER/NAME (None when it is), by huggingface_hub's own
    validator: the rules the Hub applies at upload (96 characters at most, no '--' or '..', no leading
    or trailing '-' or '.')."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        return f"'{repo_id}' is not USER/NAME (a Hub model repo id)"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"'{repo_id}' is not a valid Hub repo id ({str(err).rsplit(': ', 1)[0]})"
    return None


def check_repo_id(repo_id: object, where: str) -> str:
    problem = repo_id_problem(repo_id)
    if problem:
        raise LfxError(f"{where}: {problem}")
    return str(repo_id)


def token() -> str | None:
    """HF_TOKEN, or the token stored by `hf auth login` (huggingface_hub.get_token)."""
    from huggingface_hub import get_token

    return get_token()


def _flag(name: str) -> bool:
    """A Hugging Face flag variable read as huggingface_hub and datasets read theirs (1, ON, YES, TRUE)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get(name, "").upper() in ENV_VARS_TRUE_VALUES


def offline() -> bool:
    """The Hub is off limits: huggingface_hub's HF_HUB_OFFLINE (read when it is imported, as it reads
    it itself) or the datasets library's HF_DATASETS_OFFLINE; also re-read here for a value set since."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _flag("HF_HUB_OFFLINE") or _flag("HF_DATASETS_OFFLINE")


def looks_like_repo_id(name: str) -> bool:
    """`org/name` (a Hub id) as opposed to a local path (./x, /x, ~/x, a/b/c)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def main(argv: list[str]) -> int:
    """`python -m llamafactory_ext.hub repo-id ID [WHERE]`: exit 2 with one line when ID is not a Hub repo id
    (the generated scripts check HUB_REPO with it, in a dry run and before training alike)."""
    import sys

    if len(argv) not in (2, 3) or argv[0] != "repo-id":
        print("usage: python -m llamafactory_ext.hub repo-id ID [WHERE]", file=sys.stderr)
        return 2
    problem = repo_id_problem(argv[1])
    if problem:
        prefix = f"{argv[2]}: error" if len(argv) == 3 else "error"
        print(f"{prefix}: HUB_REPO: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
