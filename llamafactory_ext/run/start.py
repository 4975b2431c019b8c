"""A start of a rendered run, carried out as its launch plan (run/launch_plan.py) says.

`train_sft.sh [--dry-run] [--fresh] [--background]` runs `python -m llamafactory_ext.run.start RUN_DIR ...`;
`merge_upload.sh [--checkpoint N] [--dry-run]` runs it with `--after-only`. In order:
1. the plan is decided and printed (a dry run stops after step 3); settings that cannot work stop here;
2. a finished run says so, runs the steps after training when asked, and stops;
3. what is missing is installed (never the pod's own torch), then the checks run (Hub repo id, `lfx check`);
4. the output folder is claimed (several nodes first meet and learn whether they share it), incomplete
   checkpoints are set aside;
5. training launches: in the foreground, or with --background in a detached process (everything above ran in
   the foreground, so a refused or finished start says so here, with its exit status);
6. node 0 merges, evaluates and uploads as asked; the pod stops when asked, or when its wall time is up.
The launcher's output goes to the terminal and to OUTPUT_ROOT/train.log, credentials redacted.

Exit status: 0 done; 2 refused before launch; the training's own status when training failed; 3 when training
succeeded but merging, evaluating or uploading failed (the outputs stay in OUTPUT_ROOT/output).
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from .. import pod
from ..secrets import environment_secrets, redact
from . import checkpoints, identity
from .launch_plan import Plan, Refusal, Step, after_steps, decide, gather, lines

REPO = Path(__file__).resolve().parents[2]
PLAN_FILE = "launch_plan.node{rank}.json"  # in OUTPUT_ROOT: what a background start decided, for the process it starts
USAGE = "usage: python -m llamafactory_ext.run.start RUN_DIR [--dry-run] [--fresh] [--background] | --after-only [--checkpoint N] [--dry-run]"


def script_help(run_dir: str, after: bool) -> str:
    """A script's --help: its own header comment (the one description of its options)."""
    script = Path(run_dir) / ("merge_upload.sh" if after else "train_sft.sh")
    try:
        header = script.read_text(encoding="utf-8").splitlines()[1:]
    except OSError:
        return USAGE
    return "\n".join(line[2:] for line in itertools.takewhile(lambda line: line.startswith("#"), header)) or USAGE


def main(argv: list[str]) -> int:
    script = "merge_upload.sh" if "--after-only" in argv else "train_sft.sh"
    try:
        return _main(argv)
    except (Refusal, identity.ClaimRefused) as why:
        print(f"{script}: error: {why}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise Refusal(USAGE)
    run_dir, options = argv[0], argv[1:]
    if "--execute" in options:
        return execute(Plan.from_json(Path(options[options.index("--execute") + 1]).read_text(encoding="utf-8")), sys.stdout)
    known = {"--dry-run", "--fresh", "--background", "--after-only", "--checkpoint", "-h", "--help"}
    checkpoint = None
    if "--checkpoint" in options:
        at = options.index("--checkpoint")
        if at + 1 >= len(options) or not options[at + 1].isdigit():
            raise Refusal("--checkpoint needs a step number")
        checkpoint = options.pop(at + 1)
    for option in options:
        if option not in known:
            raise Refusal(f"unknown option '{option}' (try --help)")
    if "-h" in options or "--help" in options:
        print(script_help(run_dir, "--after-only" in options))
        return 0
    dry, fresh, background = "--dry-run" in options, "--fresh" in options, "--background" in options
    if "--after-only" in options:
        return after_only(run_dir, checkpoint, dry)
    if checkpoint is not None:
        raise Refusal("--checkpoint is an option of merge_upload.sh")
    facts = gather(run_dir, dict(os.environ), fresh=fresh, dry=dry, background=background)
    plan = decide(facts)
    if dry:
        print("dry run: nothing is installed, written, launched or sent")
    for line in lines(plan, dry):
        print(line, flush=True)
    if plan.claim == "finished":
        print(f"train_sft.sh: {plan.claim_note}", file=sys.stderr)
        if plan.after and plan.node_rank == 0:
            return 0 if run_after(plan.after, dry) == 0 else 3
        return 0
    if plan.install and not dry:
        install(facts.python)
    for step in plan.checks:
        if subprocess.call(step.argv, env={**os.environ, **plan.launch_env}) != 0:
            return 2  # the check printed its one line
    if dry:
        return run_after(plan.after, dry=True) if plan.after and plan.node_rank == 0 else 0
    claim(plan, fresh)
    if background:
        return launch_in_background(plan)
    return execute(plan, sys.stdout, tee_log=True)


def install(python: str) -> None:
    """LLaMA-Factory, DeepSpeed and this package from the checkout, beside the pod's own torch (pod_install)."""
    from .pod_install import InstallError
    from .pod_install import install as pip_install

    if not (REPO / "pyproject.toml").is_file():
        raise Refusal(f"LLaMA-Factory or DeepSpeed is not installed, and {REPO} is not a llamafactory-ext checkout to "
                      "install from: pip install llamafactory-ext")  # fmt: skip
    try:
        pip_install(python, str(REPO))
    except InstallError as err:
        raise Refusal(str(err)) from None


def claim(plan: Plan, fresh: bool) -> None:
    """The output folder becomes this run's; with several nodes, after they met (one claimer on a shared volume)."""
    root = Path(plan.output_root)
    shared = False
    if plan.meeting:
        from .lobby import LobbyError, host, join

        step = "none" if not plan.resume else f"step {plan.resume.rsplit('checkpoint-', 1)[-1]}"
        identity_text = f"{plan.run_id}/{plan.nodes}x{plan.procs}"
        print(f"node {plan.node_rank}: meeting the other nodes at {plan.master_addr}:{plan.master_port} "
              f"(up to {plan.rendezvous_timeout}s)", flush=True)  # fmt: skip
        try:
            if plan.node_rank == 0:
                shared = host(plan.master_port, plan.nodes, identity_text, plan.rendezvous_timeout, step, root)
            else:
                shared = join(plan.master_addr, plan.master_port, plan.node_rank, identity_text, plan.rendezvous_timeout,
                              step, root)  # fmt: skip
        except LobbyError as err:
            raise Refusal(str(err)) from None
        if shared:
            print(f"node {plan.node_rank}: the nodes share {root}: node 0 alone saves checkpoints and logs")
        else:
            print(f"node {plan.node_rank}: each node has its own {root}: every node saves its checkpoints")
        for node, command in plan.commands.items():
            plan.commands[node] = [*command, f"save_on_each_node={'false' if shared else 'true'}"]
    if not (plan.meeting and shared and plan.node_rank != 0):  # on a shared volume node 0 alone claims
        print(identity.claim(root, plan.run_id, fresh), file=sys.stderr)
        for path, why in plan.set_aside:
            moved = checkpoints.set_aside(Path(path))
            print(f"warning: {path}: incomplete, skipped and moved to {moved}: {why}", file=sys.stderr)
    if plan.hostfile:  # DeepSpeed wants every node and its slots listed (the names are not used: --no_ssh)
        Path(plan.hostfile).write_text("".join(f"node{i} slots={plan.procs}\n" for i in range(plan.nodes)), encoding="utf-8")
    print(f"resuming from {plan.resume}" if plan.resume else f"starting from scratch (no complete checkpoint in {plan.output_dir})",
          flush=True)  # fmt: skip


def launch_in_background(plan: Plan) -> int:
    """Only the training (and what follows it) is detached: it reads the plan this start decided and claimed."""
    plan_file = Path(plan.output_root) / PLAN_FILE.format(rank=plan.node_rank)
    plan_file.write_text(plan.to_json() + "\n", encoding="utf-8")
    with open(plan.log, "a", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", "llamafactory_ext.run.start", plan.run_dir, "--execute", str(plan_file)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    print(f"training in the background (pid {child.pid}); follow it with: tail -f {plan.log}")
    return 0


def execute(plan: Plan, out: TextIO, tee_log: bool = False) -> int:
    """Launch this node's command, then (node 0) the steps after training; stop the pod when asked."""
    with open(plan.log, "a", encoding="utf-8") as log:
        sinks = [out, log] if tee_log else [out]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.write(f"{stamp} start: run {plan.run_id}, node {plan.node_rank} of {plan.nodes}, {plan.procs} process(es), "
                  f"resume {plan.resume or 'none'}\n")  # fmt: skip
        log.flush()
        if plan.pod_id and plan.stop_at:
            pod.start_watchdog(plan.pod_id, plan.stop_at, Path(plan.output_root))
        status = run_logged(plan.commands[plan.node_rank], {**os.environ, **plan.launch_env}, sinks)
        if status == 0:
            identity.mark_done(plan.output_dir)
        if status == 0 and plan.node_rank == 0 and plan.after and run_after(plan.after, dry=False, sinks=sinks) != 0:
            _say(sinks, "train_sft.sh: error: training finished, but merging, evaluating or uploading failed; the outputs are "
                 f"safe in {plan.output_dir} (re-run {plan.run_dir}/merge_upload.sh)", error=True)  # fmt: skip
            status = 3
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} end: run {plan.run_id}, node {plan.node_rank}, "
                  f"status {status}\n")  # fmt: skip
        log.flush()
        os.fsync(log.fileno())
    if plan.pod_id and plan.stop_when_done:
        pod.stop_watchdog(Path(plan.output_root))  # this stop comes first
        print(f"stopping pod {plan.pod_id} (the run ended with status {status})", flush=True)
        pod.stop(plan.pod_id, say=lambda line: print(line, file=sys.stderr))
    return status


def run_after(steps: list[Step], dry: bool, sinks: list[TextIO] | None = None) -> int:
    """Merge, evaluate, upload: each step's own status; the first failure stops the rest."""
    sinks = sinks or [sys.stdout]
    for step in steps:
        if dry:
            if step.kind == "upload" and Path(step.argv[4]).is_dir():  # what would leave, checked as the upload checks it
                if run_logged([*step.argv, "--dry-run"], dict(os.environ), sinks) != 0:
                    return 2
            else:
                when = " (once trained and merged)" if step.kind == "upload" else ""
                _say(sinks, f"would {step.what}{when}: {shlex.join(step.argv)}")
            continue
        _say(sinks, f"+ {step.what}")
        status = run_logged(step.argv, dict(os.environ), sinks)
        if status != 0:
            return status
    return 0


def after_only(run_dir: str, checkpoint: str | None, dry: bool) -> int:
    """merge_upload.sh: merge the run's adapter (or a checkpoint's), evaluate and upload as asked."""
    from .launch_plan import after_inputs, env_flag

    facts = gather(run_dir, dict(os.environ), dry=dry)
    python, env = facts.python, facts.env
    for name in ("MERGE", "EVAL", "UPLOAD", "ADAPTER_ONLY", "HUB_PUBLIC"):
        env_flag(env, name)  # refused here as in train_sft.sh (merge_upload.sh always merges)
    adapter, merged, hub_repo = after_inputs(facts, upload=env_flag(env, "UPLOAD"))
    if hub_repo and "huggingface_hub" in facts.installed:  # huggingface_hub's validator, as the upload applies it
        if subprocess.call([python, "-m", "llamafactory_ext.hub", "repo-id", hub_repo, "merge_upload.sh"]) != 0:
            return 2
    if checkpoint is not None:
        adapter = adapter / f"checkpoint-{checkpoint}"
    trained = trained_kind(adapter)
    if trained is None:
        if not dry:
            raise Refusal(f"no adapter or model in {adapter} (has training finished?)")
        print(f"no adapter or model in {adapter} yet (training writes it)")
        trained = "adapter" if facts.run.get("finetuning_type", "lora") in ("lora", "oft") else "model"
    adapter_only = env_flag(env, "ADAPTER_ONLY")
    if adapter_only and trained == "model":
        raise Refusal(f"ADAPTER_ONLY=1, but {adapter} holds a full model (no adapter was trained)")
    steps = after_steps(python, trained, adapter, merged, merge=True, evaluate=env_flag(env, "EVAL"), upload=env_flag(env, "UPLOAD"),
                        adapter_only=adapter_only, hub_repo=hub_repo, public=env_flag(env, "HUB_PUBLIC"))  # fmt: skip
    if dry:
        print("dry run: nothing is written or sent")
    if trained == "model":
        print(f"nothing to merge: {adapter} is the fine-tuned model itself (full or freeze fine-tuning)")
    return run_after(steps, dry)


def trained_kind(folder: Path) -> str | None:
    """What training left: 'adapter' (LoRA, merged into its base), 'model' (full or freeze: the model itself)."""
    from ..models import folder_kind  # stdlib only, as everything a bare pod python imports here

    return folder_kind(folder)


def run_logged(argv: list[str], env: dict[str, str], sinks: list[TextIO]) -> int:
    """Run `argv`, its output copied to each sink as it comes (credentials redacted); its exit status."""
    known = environment_secrets(env)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = threading.Lock()

    def pump(stream, error: bool) -> None:
        rest = b""
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            rest += chunk
            cut = max(rest.rfind(b"\n"), rest.rfind(b"\r")) + 1
            if cut:
                with lock:
                    _write(sinks, redact(rest[:cut].decode("utf-8", "replace"), known), error)
                rest = rest[cut:]
        if rest:
            with lock:
                _write(sinks, redact(rest.decode("utf-8", "replace"), known), error)

    threads = [threading.Thread(target=pump, args=(proc.stdout, False)), threading.Thread(target=pump, args=(proc.stderr, True))]
    for thread in threads:
        thread.start()
    try:
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        status = proc.wait()
    for thread in threads:
        thread.join()
    return status


def _write(sinks: list[TextIO], text: str, error: bool) -> None:
    for sink in sinks:
        target = sys.stderr if error and sink is sys.stdout else sink
        target.write(text)
        target.flush()


def _say(sinks: list[TextIO], line: str, error: bool = False) -> None:
    _write(sinks, line + "\n", error)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
