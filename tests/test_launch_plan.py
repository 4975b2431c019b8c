"""The launch plan decided from facts alone, in milliseconds: every (launcher, nodes, HOSTFILE,
CUDA_VISIBLE_DEVICES, workspace volume, resume state) combination gives the launch command each node runs, or
one refusal naming the variable. What the machine shows is gathered separately (and tested on a real run
folder below); the launchers' own parsers are the oracles for the commands."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest

from llamafactory_ext.run.launch_plan import Facts, Refusal, decide, gather, lines

RUN = Path("/home/tony/llamafactory-ext/runs/아이언맨 v2")  # a user's checkout: spaces and Hangul
WORKSPACE = Path("/workspace")


def _facts(launcher="deepspeed", nodes=1, gpus=2, env=None, hostfile=None, workspace=True, resume=None, **extra) -> Facts:
    run = {"name": "ironman", "run_id": "ironman-1a2b3c4d", "processes": f"{nodes}x{gpus}", "stage": "sft",
           "finetuning_type": "lora", "min_free_disk_gb": 20,
           "launch": {"gpus": gpus, "nodes": nodes, "launcher": launcher, "zero_stage": 3, "hub_repo": None,
                      "stop_pod_when_done": False, "max_wall_time": None}}  # fmt: skip
    root = WORKSPACE / "lfx-runs" / run["run_id"] if workspace else RUN
    values = dict(run_dir=RUN, run=run, env=dict(env or {}), output_root=root, python="/usr/bin/python3", gpus_listed=8,
                  shm_free_mb=64_000, hostfile=hostfile, address="10.65.0.2", free_port=41234, now=1_800_000_000.0,
                  resume=str(root / "output" / f"checkpoint-{resume}") if resume else None,
                  owner=run["run_id"] if resume else None, status="started" if resume else "empty")  # fmt: skip
    values.update(extra)
    return Facts(**values)


def _refused(facts: Facts) -> str:
    with pytest.raises(Refusal) as caught:
        decide(facts)
    line = str(caught.value)
    assert "\n" not in line
    return line


def _deepspeed_args(command: list[str]):
    """DeepSpeed's own runner parser reads the command (what the launcher will do with it)."""
    from deepspeed.launcher.runner import parse_args

    start = command.index("deepspeed.launcher.runner") + 1
    return parse_args(command[start:])


def _torchrun_args(command: list[str]):
    from torch.distributed.run import get_args_parser

    start = command.index("torch.distributed.run") + 1
    return get_args_parser().parse_args(command[start:])


LAUNCHERS = ("deepspeed", "torchrun")
NODES = (1, 2)
HOSTFILES = ("none", "matching")
VISIBLE = ("unset", "2,3")
VOLUMES = (True, False)
RESUMES = (None, 40)


@pytest.mark.parametrize("launcher,nodes,hostfile,visible,volume,resume",
                         list(itertools.product(LAUNCHERS, NODES, HOSTFILES, VISIBLE, VOLUMES, RESUMES)))  # fmt: skip
def test_every_combination_gives_each_node_its_command(launcher, nodes, hostfile, visible, volume, resume):
    env = {"NNODES": str(nodes), "NODE_RANK": "1" if nodes > 1 else "0"}
    if nodes > 1:
        env["MASTER_ADDR"] = "10.65.0.2"
    if visible != "unset":
        env["CUDA_VISIBLE_DEVICES"] = visible
    hosts = None
    if hostfile == "matching":
        env["HOSTFILE"] = "/workspace/hostfile"
        hosts = {f"worker-{i}": 8 if visible != "unset" else 2 for i in range(nodes)}
    plan = decide(_facts(launcher, nodes, 2, env, hosts, volume, resume))
    root = WORKSPACE / "lfx-runs" / "ironman-1a2b3c4d" if volume else RUN
    assert plan.output_dir == str(root / "output") and plan.log == str(root / "train.log")
    assert sorted(plan.commands) == list(range(nodes)) and plan.node_rank == (1 if nodes > 1 else 0)
    for rank, command in plan.commands.items():
        train_args = command[command.index("llamafactory_ext.train") + 1:]
        assert train_args[0] == str(RUN / "train.yaml") and f"output_dir={root / 'output'}" in train_args
        assert (f"resume_from_checkpoint={root / 'output' / 'checkpoint-40'}" if resume else "overwrite_output_dir=true") in train_args
        if launcher == "deepspeed":
            args = _deepspeed_args(command)
            assert args.master_port == plan.master_port and args.module
            if nodes > 1 or hostfile == "matching":  # every node on its own, no ssh (one node with a HOSTFILE too)
                assert args.no_ssh and args.node_rank == rank
                assert args.hostfile == (env.get("HOSTFILE") or str(root / f"hostfile.node{plan.node_rank}"))
            if visible != "unset":  # --num_gpus would make DeepSpeed drop CUDA_VISIBLE_DEVICES
                assert args.num_gpus == -1 and all(part.endswith(":2,3") for part in args.include.split("@")), args.include
            elif nodes == 1 and hostfile == "none":
                assert args.num_gpus == 2 and args.include == ""
        else:
            args = _torchrun_args(command)
            assert (args.nnodes, args.node_rank, args.nproc_per_node) == (str(nodes), rank, "2")
            assert args.master_addr == ("10.65.0.2" if nodes > 1 else "127.0.0.1")
            assert any("HOSTFILE" in w for w in plan.warnings) == (hostfile == "matching")


def test_the_cluster_primary_finds_its_own_address_and_the_default_port():
    plan = decide(_facts("torchrun", 2, 1, {"NNODES": "2", "NODE_RANK": "0"}))
    assert (plan.master_addr, plan.master_port, plan.meeting) == ("10.65.0.2", 29500, True)


def test_runpod_cluster_variables_alone_start_a_node():
    env = {"NUM_NODES": "2", "NUM_TRAINERS": "8", "NODE_RANK": "1", "PRIMARY_ADDR": "10.65.0.2", "PRIMARY_PORT": "29555",
           "WORLD_SIZE": "16", "NODE_ADDR": "10.65.0.3"}  # fmt: skip
    plan = decide(_facts("torchrun", 2, 8, env))
    assert (plan.master_addr, plan.master_port, plan.node_rank) == ("10.65.0.2", 29555, 1)
    assert plan.launch_env["NCCL_SOCKET_IFNAME"] == "ens1"  # RunPod's docs: eth0 times out


REFUSALS = {
    "hostfile_one_slot_per_node": (dict(nodes=2, gpus=2, env={"NNODES": "2", "HOSTFILE": "/workspace/hosts"},
                                        hostfile={"a": 1, "b": 1}),
                                   "HOSTFILE='/workspace/hosts': host a has slots=1, this run was rendered for 2 process(es) per node"),
    "hostfile_three_hosts_for_two_nodes": (dict(nodes=2, gpus=2, env={"NNODES": "2", "HOSTFILE": "/workspace/hosts"},
                                                hostfile={"a": 2, "b": 2, "c": 2}),
                                           "HOSTFILE='/workspace/hosts' lists 3 host(s), this run was rendered for 2 node(s)"),
    "hostfile_missing": (dict(env={"HOSTFILE": "/workspace/nope"}, hostfile_problem="HOSTFILE='/workspace/nope' is not a file"),
                         "HOSTFILE='/workspace/nope' is not a file"),
    "visible_gpus_too_few": (dict(gpus=2, env={"CUDA_VISIBLE_DEVICES": "5"}), "2 GPUs requested, 1 visible (CUDA_VISIBLE_DEVICES=5)"),
    "visible_gpus_by_uuid_under_deepspeed": (dict(gpus=1, env={"CUDA_VISIBLE_DEVICES": "GPU-8a1c5e2f-77d0-4f5e-9c3a-0b1d2e3f4a5b"}),
                                             "DeepSpeed's launcher selects GPUs by index"),
    "hostfile_fewer_slots_than_visible_index": (dict(gpus=2, env={"HOSTFILE": "/h", "CUDA_VISIBLE_DEVICES": "6,7"}, hostfile={"a": 4}),
                                                "host a has slots=4, but CUDA_VISIBLE_DEVICES=6,7 names GPU 7"),
    "no_nvidia_smi": (dict(gpus_listed=None), "no GPU visible (nvidia-smi not found); LFX_DEVICE=cpu runs on CPU"),
    "shape_from_the_cluster": (dict(nodes=2, gpus=1, env={"NUM_NODES": "4", "NUM_TRAINERS": "1", "PRIMARY_ADDR": "10.0.0.1"}),
                               "rendered for 2 node(s) x 1 GPU(s), here 4 x 1 (NUM_NODES, NUM_TRAINERS): re-render it with --nodes 4 --gpus 1"),
    "worker_without_primary": (dict(nodes=2, gpus=1, env={"NNODES": "2", "NODE_RANK": "1"}), "NODE_RANK=1 needs MASTER_ADDR"),
    "rank_outside": (dict(env={"NODE_RANK": "2"}), "NODE_RANK='2' is outside 0..0"),
    "port_text": (dict(env={"MASTER_PORT": "http"}), "MASTER_PORT='http' is not a port (1-65535)"),
    "flag_yes": (dict(env={"MERGE": "yes"}), "MERGE='yes' must be 0 or 1"),
    "upload_without_repo": (dict(env={"UPLOAD": "1", "HF_TOKEN": "x"}), "UPLOAD=1 but no Hub repo"),
    "upload_without_token": (dict(env={"UPLOAD": "1", "HUB_REPO": "tony/ironman"}), "UPLOAD=1 needs HF_TOKEN"),
    "merged_inside_output": (dict(env={"MERGED_DIR": "/workspace/lfx-runs/ironman-1a2b3c4d/output/merged"}), "is inside the output folder"),
    "disk_full": (dict(disk=("/workspace", 3, True)), "3 GB free under /workspace, checkpoints need about 20 GB"),
    "another_renders_outputs": (dict(owner="ironman-99999999", status="started"), "holds the outputs of run ironman-99999999"),
    "wall_time_not_a_duration": (dict(env={"RUNPOD_POD_ID": "x1", "LFX_MAX_WALL_TIME": "12"}), "LFX_MAX_WALL_TIME='12' is not a duration"),
    "launcher_typo": (dict(env={"LAUNCHER": "torchrn"}), "LAUNCHER='torchrn' is not deepspeed or torchrun"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_settings_that_cannot_work_are_one_line(case):
    settings, message = REFUSALS[case]
    assert message in _refused(_facts(**settings))


def test_a_dry_run_says_what_a_real_start_would_stop_on_instead_of_stopping():
    plan = decide(_facts(gpus_listed=None, dry=True))
    assert "a real start would stop here: no GPU visible (nvidia-smi not found)" in " ".join(plan.warnings)


def test_a_finished_run_plans_only_the_steps_after_training():
    plan = decide(_facts(owner="ironman-1a2b3c4d", status="finished", env={"MERGE": "1", "EVAL": "1"}))
    assert plan.claim == "finished" and [s.kind for s in plan.after] == ["merge", "eval"]


def test_full_fine_tuning_merges_nothing_and_adapter_only_is_refused_for_it():
    facts = _facts(env={"MERGE": "1", "EVAL": "1"})
    facts.run["finetuning_type"] = "full"
    plan = decide(facts)
    assert [s.kind for s in plan.after] == ["eval"] and plan.after[0].argv[-1] == plan.output_dir
    facts.env["ADAPTER_ONLY"] = "1"
    assert "there is no adapter" in _refused(facts)


def test_checks_that_need_packages_say_why_they_are_not_made_on_a_bare_python():
    bare = _facts(dry=True, installed=frozenset(), env={"HUB_REPO": "tony/iron--man"})
    plan = decide(bare)
    notes = " ".join(plan.notes)
    assert plan.install and not plan.checks
    assert "lfx check: not made here: deepspeed, llamafactory, llamafactory_ext not installed" in notes
    assert "Hub repo id tony/iron--man: its shape only (huggingface_hub is not installed here" in notes
    installed = decide(_facts(dry=True, env={"HUB_REPO": "tony/ironman"}))
    assert [s.argv[2:5] for s in installed.checks] == [["llamafactory_ext.hub", "repo-id", "tony/ironman"],
                                                       ["llamafactory_ext", "check", str(RUN / "recipe.yaml")]]  # fmt: skip


def test_the_pod_stops_when_asked_and_at_its_wall_time():
    env = {"RUNPOD_POD_ID": "q8vz1xk2rb7n3m", "LFX_MAX_WALL_TIME": "12h", "RUNPOD_STOP_WHEN_DONE": "1"}
    plan = decide(_facts(env=env))
    assert plan.stop_when_done and plan.stop_at == 1_800_000_000.0 + 12 * 3600
    text = "\n".join(lines(plan, dry=True))
    assert "pod q8vz1xk2rb7n3m stops when the run ends" in text and "2027-01-15T20:00:00Z whatever happens" in text
    recipe_says = _facts()
    recipe_says.run["launch"].update(stop_pod_when_done=True, max_wall_time="90m")
    off_pod = decide(recipe_says)
    assert not off_pod.stop_when_done and off_pod.stop_at is None and "RUNPOD_POD_ID is unset" in " ".join(off_pod.warnings)
    on_pod = decide(_facts(env={"RUNPOD_POD_ID": "q8vz1xk2rb7n3m"}, run=recipe_says.run))
    assert on_pod.stop_when_done and on_pod.stop_at == 1_800_000_000.0 + 5400
    overridden = decide(_facts(env={"RUNPOD_POD_ID": "q8vz1xk2rb7n3m", "RUNPOD_STOP_WHEN_DONE": "0"}, run=recipe_says.run))
    assert not overridden.stop_when_done


def test_the_printed_plan_names_each_nodes_command_and_no_secret():
    env = {"NNODES": "2", "NODE_RANK": "0", "HF_TOKEN": "hf_" + "QbVzNtKpRwHsLmCxJdFgYuEaTiOeWrXsDn", "UPLOAD": "1",
           "HUB_REPO": "tony/ironman"}  # fmt: skip
    text = "\n".join(lines(decide(_facts("torchrun", 2, 2, env)), dry=True))
    assert "HF_TOKEN=set" in text and "QbVzNt" not in text
    for node in (0, 1):
        command = next(line for line in text.splitlines() if line.startswith(f"node {node} would run: "))
        assert shlex.split(command.split(": ", 1)[1])[0] == "/usr/bin/python3" and f"--node_rank {node}" in command


def test_gather_reads_a_rendered_run_folder_and_its_outputs(tmp_path):
    """The facts of a real folder: run.json, the workspace volume, the output's owner and a checkpoint cut short."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_facts().run), encoding="utf-8")
    space = tmp_path / "workspace"
    out = space / "lfx-runs" / "ironman-1a2b3c4d" / "output"
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # a save killed midway
    (out / ".lfx_run_id").write_text("ironman-1a2b3c4d\n")
    facts = gather(run, {"LFX_WORKSPACE": str(space)})
    assert facts.output_root == out.parent and facts.owner == "ironman-1a2b3c4d" and facts.status == "started"
    assert facts.resume == str(out / "checkpoint-2") and facts.incomplete[0][0] == str(out / "checkpoint-4")
    with pytest.raises(Refusal, match="not a run folder"):
        gather(tmp_path, {})


def test_a_plan_asked_for_in_a_folder_that_is_not_a_run_folder_is_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "llamafactory_ext.run.start", str(tmp_path), "--dry-run"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"train_sft.sh: error: {tmp_path}: not a run folder (no run.json with a "
                                                "launch block: render one with `lfx render RECIPE -o DIR`)"]  # fmt: skip
