"""Everything a start of a rendered run does, decided in one place before anything happens.

`train_sft.sh` only finds a Python and hands over to `python -m llamafactory_ext.run.start`, which asks this
module for the plan, prints it and carries it out. The plan comes from facts gathered once (`gather`: the run
folder's run.json, the environment, the output folder and its checkpoints, the GPUs, the disk, a HOSTFILE) by
a pure function (`decide`), so what a start will do is known, printed and tested without starting it. A
setting that cannot work is a `Refusal`: one line naming the variable, field or file, exit status 2, before
anything is claimed or written. `--dry-run` prints the same plan through the same code.

Environment read (RunPod Instant Cluster names in brackets): NNODES [NUM_NODES], NODE_RANK, MASTER_ADDR
[PRIMARY_ADDR], MASTER_PORT [PRIMARY_PORT], NPROC_PER_NODE [NUM_TRAINERS], HOSTFILE, CUDA_VISIBLE_DEVICES,
LAUNCHER, LFX_DEVICE, LFX_WORKSPACE, OUTPUT_ROOT, MERGED_DIR, MERGE, EVAL, UPLOAD, ADAPTER_ONLY, HUB_REPO,
HUB_PUBLIC, HF_TOKEN (whether set), HF_HOME, MIN_FREE_DISK_GB, LFX_RENDEZVOUS_TIMEOUT, LFX_SKIP_CHECK,
RUNPOD_POD_ID, RUNPOD_STOP_WHEN_DONE, LFX_MAX_WALL_TIME.

Standard library only: a pod's bare python3 prints the plan before anything is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pod
from ..record import read_run_file, workspace
from . import checkpoints, identity

PACKAGES = ("llamafactory_ext", "llamafactory", "deepspeed", "huggingface_hub", "safetensors")
ADAPTER_TYPES = ("lora", "oft")  # training leaves an adapter to merge; full and freeze leave the model itself
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class Refusal(Exception):
    """A start that cannot work: one line, exit status 2, nothing claimed or written."""


@dataclass(frozen=True)
class Facts:
    """What the machine shows, read once by `gather` (tests build them by hand)."""

    run_dir: Path
    run: dict  # run.json: name, run_id, processes, launch block, finetuning_type, stage, min_free_disk_gb
    env: dict[str, str]
    output_root: Path
    python: str = sys.executable
    fresh: bool = False
    dry: bool = False
    background: bool = False
    owner: str | None = None  # the run id marked in OUTPUT_ROOT/output (None: empty)
    status: str = "empty"  # identity.status of OUTPUT_ROOT/output
    resume: str | None = None  # the newest complete checkpoint
    incomplete: tuple[tuple[str, str], ...] = ()  # newer checkpoints to set aside, with why
    installed: frozenset[str] = frozenset(PACKAGES)
    gpus_listed: int | None = None  # `nvidia-smi -L` lines (None: no nvidia-smi)
    shm_free_mb: int | None = None
    disk: tuple[str, int, bool] = ("/", 1000, True)  # the nearest existing folder of the outputs, GB free, writable
    hostfile: dict[str, int] | None = None  # HOSTFILE read by DeepSpeed's own parser: host -> slots
    hostfile_problem: str | None = None
    hub_login: bool = False  # a stored `hf auth login` token
    address: str = "127.0.0.1"  # this machine's first address (`hostname -I`), for node 0 of a cluster
    free_port: int = 29500
    now: float = 0.0


@dataclass
class Step:
    kind: str  # check, merge, eval, upload
    what: str
    argv: list[str]


@dataclass
class Plan:
    run_id: str
    run_dir: str
    nodes: int
    procs: int
    node_rank: int
    launcher: str
    device: str
    master_addr: str
    master_port: int
    output_root: str
    output_dir: str
    merged_dir: str
    log: str
    claim: str  # "train" or "finished"
    claim_note: str
    resume: str | None
    set_aside: list[tuple[str, str]]
    install: bool  # LLaMA-Factory, DeepSpeed or this package missing: installed before the checks
    checks: list[Step]  # run before the claim (Hub repo id, lfx check)
    notes: list[str]  # checks decided here, and checks that cannot be made here and why
    warnings: list[str]
    commands: dict[int, list[str]]  # the launch command of each node (a dry run shows every node's)
    launch_env: dict[str, str]  # what the launch adds to the environment
    meeting: bool  # several nodes meet before the launch (run/lobby.py)
    hostfile: str | None  # the hostfile this start writes for DeepSpeed's launcher (several nodes, no HOSTFILE)
    trained: str  # what training leaves: "adapter" (merged after) or "model" (full or freeze: the model itself)
    rendezvous_timeout: int
    after: list[Step]  # on node 0 once training finished: merge, eval, upload
    pod_id: str | None
    stop_when_done: bool
    stop_at: float | None  # epoch seconds: the pod stops then whatever happens
    reads: dict[str, str] = field(default_factory=dict)  # the environment that decided the plan

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        data["commands"] = {int(k): v for k, v in data["commands"].items()}
        data["checks"] = [Step(**s) for s in data["checks"]]
        data["after"] = [Step(**s) for s in data["after"]]
        data["set_aside"] = [tuple(p) for p in data["set_aside"]]
        return cls(**data)


# --- reading the machine --------------------------------------------------------------------------------------

def gather(run_dir: str | Path, env: dict[str, str], fresh: bool = False, dry: bool = False, background: bool = False) -> Facts:
    """Read what the plan depends on. Writes nothing. Every step runs with PYTHON (the interpreter train_sft.sh
    chose), else this one."""
    python = env.get("PYTHON") or sys.executable
    run_dir = Path(run_dir).resolve()
    run = read_run_file(run_dir)
    if not run or "run_id" not in run or "launch" not in run:
        raise Refusal(f"{run_dir}: not a run folder (no run.json with a launch block: render one with `lfx render RECIPE -o DIR`)")
    root = Path(env["OUTPUT_ROOT"]) if env.get("OUTPUT_ROOT") else _default_root(run_dir, run["run_id"], env)
    output_dir = root / "output"
    installed = frozenset(p for p in PACKAGES if importlib.util.find_spec(p) is not None)
    chosen, skipped = checkpoints.resume_point(output_dir, verify_weights="safetensors" in installed)
    hostfile, hostfile_problem = _read_hostfile(env.get("HOSTFILE"), "deepspeed" in installed)
    disk_dir = output_dir
    while not disk_dir.is_dir() and disk_dir != disk_dir.parent:
        disk_dir = disk_dir.parent
    usage = shutil.disk_usage(disk_dir)
    shm = shutil.disk_usage("/dev/shm").free // 2**20 if Path("/dev/shm").is_dir() else None
    return Facts(run_dir=run_dir, run=run, env=dict(env), output_root=root, python=python, fresh=fresh, dry=dry,
                 background=background, owner=identity.owner(output_dir), status=identity.status(output_dir),
                 resume=str(chosen) if chosen else None, incomplete=tuple((str(p), why) for p, why in skipped),
                 installed=installed, gpus_listed=_gpus_listed(), shm_free_mb=shm,
                 disk=(str(disk_dir), int(usage.free // 2**30), os.access(disk_dir, os.W_OK)),
                 hostfile=hostfile, hostfile_problem=hostfile_problem,
                 hub_login=(Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "token").is_file(),
                 address=_address(), free_port=_free_port(), now=time.time())  # fmt: skip


def _default_root(run_dir: Path, rid: str, env: dict[str, str]) -> Path:
    space = workspace(env)
    return space / "lfx-runs" / rid if space is not None else run_dir


def _gpus_listed() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU"))


def _read_hostfile(path: str | None, deepspeed: bool) -> tuple[dict[str, int] | None, str | None]:
    """DeepSpeed's own hostfile parser decides what the file says (without DeepSpeed: the plan says so)."""
    if not path:
        return None, None
    if not Path(path).is_file():
        return None, f"HOSTFILE='{path}' is not a file"
    if not deepspeed:
        return None, None
    import contextlib
    import io
    import logging

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its accelerator note
        from deepspeed.launcher.runner import fetch_hostfile
    logging.getLogger("DeepSpeed").setLevel(logging.CRITICAL)  # its own "Bad hostfile text" line: ours says it
    try:
        return dict(fetch_hostfile(path)), None
    except ValueError as err:
        return None, f"HOSTFILE='{path}': {err}"


def _address() -> str:
    try:
        found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        found = []
    return found[0] if found else "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# --- deciding -------------------------------------------------------------------------------------------------

def env_flag(env: dict[str, str], name: str, default: bool = False) -> bool:
    """A 0/1 setting from the environment; anything else is refused, not read as off."""
    value = env.get(name, "")
    if value == "":
        return default
    if value not in ("0", "1"):
        raise Refusal(f"{name}='{value}' must be 0 or 1")
    return value == "1"


def _count(env: dict[str, str], names: tuple[str, ...], default: int, zero_ok: bool = False) -> tuple[str, int]:
    """The first of `names` that is set, as a count (zero allowed for a rank)."""
    name = next((n for n in names if env.get(n, "") != ""), None)
    if name is None:
        return names[0], default
    value = env[name]
    if not re.fullmatch(r"0|[1-9][0-9]*" if zero_ok else r"[1-9][0-9]*", value):
        raise Refusal(f"{name}='{value}' is not a {'number' if zero_ok else 'positive integer'}")
    return name, int(value)


def visible_gpus(env: dict[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None: not set, every GPU is visible)."""
    if "CUDA_VISIBLE_DEVICES" not in env:
        return None
    entries = [e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",") if e.strip()]
    # CUDA stops at the first invalid index ("-1" hides every GPU)
    return entries[: next((i for i, e in enumerate(entries) if e.startswith("-")), len(entries))]


def decide(f: Facts) -> Plan:
    """The plan of one start, from the facts alone; a Refusal for settings that cannot work."""
    env, launch, rid = f.env, f.run["launch"], f.run["run_id"]
    reads: dict[str, str] = {}
    launcher = env.get("LAUNCHER") or launch["launcher"]
    if launcher not in ("deepspeed", "torchrun"):
        raise Refusal(f"LAUNCHER='{launcher}' is not deepspeed or torchrun")
    device = env.get("LFX_DEVICE") or "cuda"
    if device not in ("cuda", "cpu"):
        raise Refusal(f"LFX_DEVICE='{device}' is not cuda or cpu")
    merge, evaluate, upload = (env_flag(env, n) for n in ("MERGE", "EVAL", "UPLOAD"))
    adapter_only, public, skip_check = (env_flag(env, n) for n in ("ADAPTER_ONLY", "HUB_PUBLIC", "LFX_SKIP_CHECK"))
    _, min_disk = _count(env, ("MIN_FREE_DISK_GB",), int(f.run.get("min_free_disk_gb", 20)), zero_ok=True)
    _, timeout = _count(env, ("LFX_RENDEZVOUS_TIMEOUT",), 600)

    # the shape: RunPod Instant Cluster variables, else the usual ones, else the recipe's
    nodes_var, nodes = _count(env, ("NNODES", "NUM_NODES"), launch["nodes"])
    procs_var, procs = _count(env, ("NPROC_PER_NODE", "NUM_TRAINERS"), launch["gpus"])
    rank_text = env.get("NODE_RANK") or "0"
    if not re.fullmatch(r"0|[1-9][0-9]*", rank_text) or int(rank_text) >= nodes:
        raise Refusal(f"NODE_RANK='{rank_text}' is outside 0..{nodes - 1}")
    rank = int(rank_text)
    port_var, port = next(((n, env[n]) for n in ("MASTER_PORT", "PRIMARY_PORT") if env.get(n)), ("MASTER_PORT", ""))
    if port and (not re.fullmatch(r"[1-9][0-9]*", port) or int(port) > 65535):
        raise Refusal(f"{port_var}='{port}' is not a port (1-65535)")
    # The global batch (per device x accumulation x processes) was fixed when rendering: another shape would
    # silently train another run, so it is refused rather than followed.
    if (nodes, procs) != (launch["nodes"], launch["gpus"]):
        raise Refusal(f"this run was rendered for {launch['nodes']} node(s) x {launch['gpus']} GPU(s), here {nodes} x {procs} "
                      f"({nodes_var}, {procs_var}): re-render it with --nodes {nodes} --gpus {procs}")  # fmt: skip
    addr = env.get("MASTER_ADDR") or env.get("PRIMARY_ADDR") or ""
    launch_env = {"LFX_DATASETS_DIR": str(f.run_dir / "data")}
    if (f.run_dir / "templates").is_dir():
        launch_env["LFX_TEMPLATES_DIR"] = str(f.run_dir / "templates")
    if nodes > 1:
        port = port or "29500"  # one port every node agrees on without talking
        if not addr:
            if rank != 0:
                raise Refusal(f"NODE_RANK={rank} needs MASTER_ADDR, the address of node 0 (RunPod clusters set PRIMARY_ADDR)")
            addr = f.address
        if env.get("PRIMARY_ADDR") and env.get("NUM_TRAINERS") and device == "cuda":
            launch_env["NCCL_SOCKET_IFNAME"] = env.get("NCCL_SOCKET_IFNAME") or "ens1"  # RunPod's docs: eth0 times out
    else:
        addr = addr or "127.0.0.1"
        port = port or str(f.free_port)

    warnings: list[str] = []
    notes: list[str] = []
    gpus = visible_gpus(env) if device == "cuda" else None
    slots = _hostfile_slots(f, launcher, nodes, procs, gpus, warnings)
    _gpu_check(f, device, procs, gpus, warnings, notes)
    if launcher == "deepspeed" and gpus is not None and not all(g.isdigit() for g in gpus):
        raise Refusal(f"CUDA_VISIBLE_DEVICES='{env['CUDA_VISIBLE_DEVICES']}': DeepSpeed's launcher selects GPUs by index "
                      "(--include host:0,1); give indices, or start with LAUNCHER=torchrun")  # fmt: skip

    # outputs: this run's own folder
    root = f.output_root
    output_dir, merged_dir, hub_repo = after_inputs(f, upload)
    folder, free_gb, writable = f.disk
    if not writable:
        raise Refusal(f"{folder} is not writable (OUTPUT_ROOT={root})")
    if free_gb < min_disk:
        raise Refusal(f"{free_gb} GB free under {folder}, checkpoints need about {min_disk} GB (MIN_FREE_DISK_GB)")
    what, why, _ = identity.decide_claim(root, rid, f.owner, f.status, f.fresh)
    if what == "refuse":
        raise Refusal(why)

    # checks that need the installed packages: run before the claim, or said why not
    checks: list[Step] = []
    missing = sorted({"llamafactory_ext", "llamafactory", "deepspeed"} - f.installed)
    if hub_repo:
        if "huggingface_hub" in f.installed or not f.dry:
            checks.append(Step("check", f"Hub repo id {hub_repo} (huggingface_hub's validator)",
                               [f.python, "-m", "llamafactory_ext.hub", "repo-id", hub_repo, "train_sft.sh"]))  # fmt: skip
        else:
            notes.append(f"Hub repo id {hub_repo}: its shape only (huggingface_hub is not installed here; the real start "
                         "checks it with huggingface_hub's validator after installing)")  # fmt: skip
    if skip_check:
        notes.append("lfx check: skipped (LFX_SKIP_CHECK=1)")
    elif not missing or not f.dry:
        checks.append(Step("check", "lfx check (the run as rendered, LLaMA-Factory's own argument checks)",
                           [f.python, "-m", "llamafactory_ext", "check", str(f.run_dir / "recipe.yaml")]))  # fmt: skip
    else:
        notes.append(f"lfx check: not made here: {', '.join(missing)} not installed (the real start installs them, then "
                     "checks)")  # fmt: skip
    if "safetensors" not in f.installed and f.resume:
        notes.append("resume point: checkpoints read without opening their weights (safetensors is not installed here; "
                     "the real start opens them)")  # fmt: skip

    resume = None if f.fresh else f.resume
    args = [str(f.run_dir / "train.yaml"), f"output_dir={output_dir}", f"deepspeed={f.run_dir / 'ds_config.json'}",
            f"dataset_dir={f.run_dir / 'data'}"]  # fmt: skip
    # Decided here: resume or not. LLaMA-Factory would otherwise stop on the weights an interrupted start left
    # ("Output directory already exists", llamafactory/hparams/parser.py:495); it deletes nothing.
    args.append(f"resume_from_checkpoint={resume}" if resume else "overwrite_output_dir=true")
    if device == "cpu":
        args += ["ddp_backend=gloo", "bf16=false", "fp16=false"]
    hostfile = env.get("HOSTFILE") or str(root / f"hostfile.node{rank}")
    written_hostfile = hostfile if launcher == "deepspeed" and nodes > 1 and not env.get("HOSTFILE") else None
    commands = {node: _launch_command(f.python, launcher, nodes, procs, node, addr, int(port), timeout, hostfile, slots, gpus,
                                      args) for node in range(nodes)}  # fmt: skip

    trained = "adapter" if f.run.get("finetuning_type", "lora") in ADAPTER_TYPES else "model"
    after = after_steps(f.python, trained, output_dir, merged_dir, merge, evaluate, upload, adapter_only, hub_repo, public)
    if adapter_only and trained == "model":
        raise Refusal(f"ADAPTER_ONLY=1, but this run trains the whole model (finetuning_type {f.run.get('finetuning_type')}): "
                      "there is no adapter")  # fmt: skip
    pod_id = pod.pod_id(env)
    stop_when_done = env_flag(env, "RUNPOD_STOP_WHEN_DONE", bool(launch.get("stop_pod_when_done")))
    wall = env.get("LFX_MAX_WALL_TIME") or launch.get("max_wall_time")
    seconds = pod.duration_seconds(wall) if wall else None
    if wall and seconds is None:
        raise Refusal(f"LFX_MAX_WALL_TIME='{wall}' is not a duration (e.g. 12h, 90m, 2d, 3600s)")
    if (stop_when_done or wall) and not pod_id:
        warnings.append("not a RunPod pod (RUNPOD_POD_ID is unset): the pod-stop settings do nothing here")
    for name in ("NNODES", "NUM_NODES", "NODE_RANK", "MASTER_ADDR", "PRIMARY_ADDR", "MASTER_PORT", "PRIMARY_PORT",
                 "NPROC_PER_NODE", "NUM_TRAINERS", "HOSTFILE", "CUDA_VISIBLE_DEVICES", "LAUNCHER", "LFX_DEVICE", "LFX_WORKSPACE",
                 "OUTPUT_ROOT", "MERGED_DIR", "MERGE", "EVAL", "UPLOAD", "ADAPTER_ONLY", "HUB_REPO", "HUB_PUBLIC", "HF_HOME",
                 "MIN_FREE_DISK_GB", "LFX_RENDEZVOUS_TIMEOUT", "LFX_SKIP_CHECK", "RUNPOD_POD_ID", "RUNPOD_STOP_WHEN_DONE",
                 "LFX_MAX_WALL_TIME"):  # fmt: skip
        if name in env:
            reads[name] = env[name]
    reads["HF_TOKEN"] = "set" if env.get("HF_TOKEN") else "unset"
    return Plan(run_id=rid, run_dir=str(f.run_dir), nodes=nodes, procs=procs, node_rank=rank, launcher=launcher, device=device,
                master_addr=addr, master_port=int(port), output_root=str(root), output_dir=str(output_dir),
                merged_dir=str(merged_dir), log=str(root / "train.log"), claim=what, claim_note=why,
                resume=resume, set_aside=[] if f.fresh else list(f.incomplete), install=bool(missing), checks=checks,
                notes=notes, warnings=warnings, commands=commands, launch_env=launch_env, meeting=nodes > 1,
                hostfile=written_hostfile, trained=trained,
                rendezvous_timeout=timeout, after=after, pod_id=pod_id, stop_when_done=stop_when_done and bool(pod_id),
                stop_at=f.now + seconds if seconds and pod_id else None, reads=reads)  # fmt: skip


def _hostfile_slots(f: Facts, launcher: str, nodes: int, procs: int, gpus: list[str] | None,
                    warnings: list[str]) -> dict[str, int] | None:  # fmt: skip
    """The hosts DeepSpeed's launcher gets (the user's HOSTFILE, checked against the rendered shape)."""
    if f.hostfile_problem:
        raise Refusal(f.hostfile_problem)
    if "HOSTFILE" in f.env and f.env["HOSTFILE"] and launcher == "torchrun":
        warnings.append("HOSTFILE is read by DeepSpeed's launcher only: torchrun ignores it (NNODES, NODE_RANK and "
                        "MASTER_ADDR say where the nodes are)")  # fmt: skip
        return None
    if f.hostfile is None:
        return None
    name = f.env["HOSTFILE"]
    if len(f.hostfile) != nodes:
        raise Refusal(f"HOSTFILE='{name}' lists {len(f.hostfile)} host(s), this run was rendered for {nodes} node(s)")
    for host, slots in f.hostfile.items():
        chosen = [int(g) for g in (gpus or [])[:procs] if g.isdigit()]
        if gpus is None and slots != procs:
            raise Refusal(f"HOSTFILE='{name}': host {host} has slots={slots}, this run was rendered for {procs} process(es) "
                          f"per node (the global batch depends on it): make every host slots={procs}, or re-render with "
                          f"--gpus {slots}")  # fmt: skip
        if chosen and max(chosen) >= slots:
            raise Refusal(f"HOSTFILE='{name}': host {host} has slots={slots}, but CUDA_VISIBLE_DEVICES="
                          f"{f.env['CUDA_VISIBLE_DEVICES']} names GPU {max(chosen)}")  # fmt: skip
    return f.hostfile


def _gpu_check(f: Facts, device: str, procs: int, gpus: list[str] | None, warnings: list[str], notes: list[str]) -> None:
    if device == "cpu":
        notes.append(f"GPUs: none used (LFX_DEVICE=cpu: {procs} gloo process(es))")
        return
    if f.gpus_listed is None:
        problem = "no GPU visible (nvidia-smi not found); LFX_DEVICE=cpu runs on CPU"
    else:
        visible = f.gpus_listed if gpus is None else min(len(gpus), f.gpus_listed)
        where = f" (CUDA_VISIBLE_DEVICES={f.env['CUDA_VISIBLE_DEVICES']})" if gpus is not None else ""
        problem = None if visible >= procs else f"{procs} GPUs requested, {visible} visible{where}"
        if problem is None:
            notes.append(f"GPUs: {procs} requested, {visible} visible{where}")
        if f.shm_free_mb is not None and f.shm_free_mb < 1024 * procs:
            warnings.append(f"/dev/shm has {f.shm_free_mb} MB free; NCCL may fail (raise the pod's shm size)")
    if problem:
        if not f.dry:
            raise Refusal(problem)
        warnings.append(f"a real start would stop here: {problem}")


def _launch_command(python: str, launcher: str, nodes: int, procs: int, rank: int, addr: str, port: int, timeout: int,
                    hostfile: str, slots: dict[str, int] | None, gpus: list[str] | None, args: list[str]) -> list[str]:  # fmt: skip
    if launcher == "torchrun":
        cmd = [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(rank), "--nproc_per_node",
               str(procs), "--master_addr", addr, "--master_port", str(port)]  # fmt: skip
        if nodes > 1:
            cmd += ["--rdzv_conf", f"timeout={timeout}"]  # static rendezvous (RunPod clusters have no c10d), bounded
        return [*cmd, "-m", "llamafactory_ext.train", *args]
    cmd = [python, "-m", "deepspeed.launcher.runner", "--master_addr", addr, "--master_port", str(port)]
    if nodes > 1 or slots is not None:
        # Every node is started on its own with its rank: --no_ssh (RunPod clusters have no ssh between nodes, and
        # DeepSpeed's runner would otherwise check ssh to the first host even for one). DeepSpeed still wants a
        # hostfile listing every node and its slots (the names are not used).
        cmd += ["--hostfile", hostfile, "--no_ssh", "--node_rank", str(rank)]
        hosts = list(slots) if slots is not None else [f"node{i}" for i in range(nodes)]
        if gpus is not None:
            cmd += ["--include", "@".join(f"{host}:{','.join(gpus[:procs])}" for host in hosts)]
    elif gpus is not None:
        # --num_gpus would make DeepSpeed's runner drop CUDA_VISIBLE_DEVICES and take GPUs 0..N-1.
        cmd += ["--include", f"localhost:{','.join(gpus[:procs])}"]
    else:
        cmd += ["--num_gpus", str(procs)]
    return [*cmd, "--module", "llamafactory_ext.train", *args]


def after_inputs(f: Facts, upload: bool) -> tuple[Path, Path, str]:
    """The output folder, where the merged model goes (MERGED_DIR), and the Hub repo an upload needs."""
    output_dir = f.output_root / "output"
    merged_dir = Path(f.env.get("MERGED_DIR") or f.output_root / "merged")
    if merged_dir.resolve() == output_dir.resolve() or output_dir.resolve() in merged_dir.resolve().parents:
        raise Refusal(f"MERGED_DIR='{merged_dir}' is inside the output folder {output_dir} (it would be merged into the "
                      "adapter it reads)")  # fmt: skip
    hub_repo = f.env.get("HUB_REPO") or f.run["launch"].get("hub_repo") or ""
    if upload and not hub_repo:
        raise Refusal("UPLOAD=1 but no Hub repo: set launch.hub_repo in the recipe or HUB_REPO")
    if upload and not (f.env.get("HF_TOKEN") or f.hub_login):
        raise Refusal("UPLOAD=1 needs HF_TOKEN in the environment or 'hf auth login'")
    if hub_repo and "huggingface_hub" not in f.installed and not REPO_ID.match(hub_repo):
        raise Refusal(f"HUB_REPO='{hub_repo}' is not USER/NAME (a Hub model repo id)")
    return output_dir, merged_dir, hub_repo


def after_steps(python: str, trained: str, adapter: Path, merged: Path, merge: bool, evaluate: bool, upload: bool,
                adapter_only: bool, hub_repo: str, public: bool) -> list[Step]:  # fmt: skip
    """Merge, evaluate and upload, as asked (merge_upload.sh runs the same steps on their own)."""
    if not (merge or evaluate or upload):
        return []
    model = adapter if trained == "model" or adapter_only else merged
    lfx = [python, "-m", "llamafactory_ext"]
    steps = []
    if trained == "adapter" and not adapter_only:
        steps.append(Step("merge", "merge the adapter into its base, shard by shard", [*lfx, "merge", str(adapter), "-o", str(merged),
                                                                              "--force"]))  # fmt: skip
    if evaluate:
        steps.append(Step("eval", "evaluate base, prompted base and tuned on the held-out prompts", [*lfx, "eval", str(model)]))
    if upload:
        steps.append(Step("upload", f"upload to {hub_repo} ({'public' if public else 'private'})",
                          [*lfx, "upload", str(model), "--repo", hub_repo, "--public" if public else "--private"]))  # fmt: skip
    return steps


# --- showing --------------------------------------------------------------------------------------------------

def lines(plan: Plan, dry: bool) -> list[str]:
    """The plan as printed by every start (a dry run prints it and stops)."""
    import shlex

    out = [f"run {plan.run_id} from {plan.run_dir}: {plan.nodes} node(s) x {plan.procs} process(es), {plan.launcher}, "
           f"{plan.device}; this is node {plan.node_rank}"]  # fmt: skip
    out.append(f"outputs: {plan.output_dir} (adapter or model, checkpoints), log {plan.log}"
               + (f", merged model {plan.merged_dir}" if plan.after else ""))  # fmt: skip
    out.append(f"claim: {plan.claim_note}" if plan.claim == "train" else f"claim: {plan.claim_note}")
    if plan.claim == "train":
        for path, why in plan.set_aside:
            out.append(f"resume: {path} is incomplete and {'would be' if dry else 'is'} set aside: {why}")
        out.append(f"resume: from {plan.resume}" if plan.resume else "resume: from scratch (no complete checkpoint)")
    out.append("install: LLaMA-Factory, DeepSpeed and this package, without touching the pod's torch" if plan.install
               else "install: nothing (llamafactory-ext, LLaMA-Factory and DeepSpeed import)")  # fmt: skip
    out += [f"check: {step.what}" for step in plan.checks] + [f"check: {note}" for note in plan.notes]
    out += [f"warning: {w}" for w in plan.warnings]
    if plan.reads:
        out.append("environment: " + " ".join(f"{k}={v}" for k, v in sorted(plan.reads.items())))
    if plan.launch_env:
        out.append("launch environment: " + " ".join(f"{k}={v}" for k, v in sorted(plan.launch_env.items())))
    if plan.meeting:
        out.append(f"nodes meet at {plan.master_addr}:{plan.master_port} first (up to {plan.rendezvous_timeout} s); "
                   "save_on_each_node is decided there (true unless they share the output volume)")  # fmt: skip
    for node, command in sorted(plan.commands.items()):
        if dry or node == plan.node_rank:
            out.append(f"node {node} {'would run' if dry else 'runs'}: {shlex.join(command)}")
    if plan.after:
        out.append("then, on node 0:" if plan.nodes > 1 else "then:")
        if plan.trained == "model":
            out.append(f"  nothing to merge: {plan.output_dir} is the fine-tuned model itself (full or freeze fine-tuning)")
        out += [f"  {step.what}: {shlex.join(step.argv)}" for step in plan.after]
    if plan.pod_id and plan.stop_when_done:
        out.append(f"pod {plan.pod_id} stops when the run ends (after the steps above, or after a failure once the log is "
                   "written): runpodctl pod stop")  # fmt: skip
    if plan.pod_id and plan.stop_at:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(plan.stop_at))
        out.append(f"pod {plan.pod_id} stops at {when} whatever happens (max wall time)")
    return out
