"""`lfx upload`: push a merged model, a full fine-tune or a LoRA adapter to the Hub with a model card, in one
commit that leaves the repo holding exactly what was pushed (earlier files deleted, `.gitattributes` kept).
Everything that would go up is checked first, in the dry run too (selection.py).

The token comes from `HF_TOKEN` or the Hub's stored login and is never printed or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import record as run_record
from ..errors import LfxError
from ..hub import check_repo_id, token
from ..models import NOT_A_MODEL, folder_kind
from .card import build_card
from .selection import Item, check, items, local_paths

KEEP = (".gitattributes",)  # the Hub's own file (LFS rules): never deleted


def source_folder(folder: str | Path, adapter_only: bool) -> tuple[Path, str]:
    """The folder to upload and what it holds: "adapter", "merged", or "full"/"freeze" (a fine-tune's output)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LfxError(f"{folder}: folder not found")
    kind = folder_kind(folder)
    if kind == "adapter":
        return folder, "adapter"
    if kind is None:
        raise LfxError(f"{folder}: {NOT_A_MODEL}")
    merge = run_record.read_merge(folder)
    if adapter_only:
        adapter = Path(merge.get("adapter", "")) if merge else None
        if adapter is None or folder_kind(adapter) != "adapter":
            raise LfxError(f"{folder / run_record.MERGE_RECORD}: --adapter-only: the adapter this model was merged from "
                           "is not recorded or gone")  # fmt: skip
        return adapter, "adapter"
    if merge:
        return folder, "merged"
    trained = (run_record.load(folder, required=False)[0].get("args") or {}).get("finetuning_type")
    return folder, trained if trained in ("full", "freeze") else "merged"


def upload(folder: str | Path, repo_id: str, *, private: bool = True, adapter_only: bool = False,
           dry_run: bool = False, echo: Callable[[str], None] = print) -> str:  # fmt: skip
    """Create the repo (private by default) and commit the folder's model files and the card, deleting whatever
    else the repo held. Returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    check_repo_id(repo_id, "--repo")
    source, kind = source_folder(folder, adapter_only)
    warnings: list[str] = []
    selected = items(source, warnings.append)
    card = str(build_card(source, kind, repo_id)).encode("utf-8")
    readme = Item("README.md", None, card)
    check([readme], local_paths(source))
    selected.append(readme)
    for line in warnings:
        echo(f"warning: {line}")
    api = HfApi()
    url = f"{api.endpoint}/{repo_id}"
    if dry_run:
        echo(f"would create {'private' if private else 'public'} model repo {url} and make it hold the {kind} in {source}:")
        for item in selected:
            echo(f"  {item.path_in_repo}  ({item.size:,} bytes{', rewritten portable' if item.content and item is not readme else ''})")
        echo("  and delete every other file the repo holds (.gitattributes stays)")
        echo("--- README.md ---")
        echo(card.decode("utf-8"))
        return url
    secret = token()
    if not secret:
        raise LfxError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' (or use --dry-run)")
    api = HfApi(token=secret)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        try:
            existing = [s.rfilename for s in api.model_info(repo_id).siblings or []]
        except RepositoryNotFoundError:
            existing = []
        wanted = {item.path_in_repo for item in selected}
        operations = [CommitOperationAdd(path_in_repo=i.path_in_repo, path_or_fileobj=i.content if i.content is not None
                                         else str(i.source)) for i in selected]  # fmt: skip
        operations += [CommitOperationDelete(path_in_repo=p) for p in existing if p not in wanted and p not in KEEP]
        api.create_commit(repo_id, operations=operations, commit_message=f"Upload {kind} with llamafactory-ext")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise LfxError(f"upload to {repo_id} failed: HTTP {status} from {api.endpoint}") from None
    except OSError as err:  # connection refused, DNS, disk
        raise LfxError(f"upload to {repo_id} failed: {type(err).__name__}: {err}") from None
    echo(f"uploaded the {kind} to {url}")
    return url

