"""Several nodes: rendezvous rules that cannot hang, RunPod Instant Cluster variables, and the
generated train_sft.sh trained for real by two loopback "nodes" of one gloo process each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, lfx

from llamafactory_ext.record import RUN_FILE
from llamafactory_ext.run import identity


@pytest.fixture(scope="module")
def two_node_recipe(tiny_llama3, tmp_path_factory) -> Path:
    from conftest import REPO

    recipe = yaml.safe_load((REPO / "launch" / "demo.yaml").read_text(encoding="utf-8"))
    recipe.pop("preset")
    recipe.update(model_name_or_path=str(tiny_llama3), template="llama3-persona", lora_target="all",
                  max_steps=2, save_steps=2, gradient_accumulation_steps=1)  # fmt: skip
    recipe["launch"] = {"gpus": 1, "nodes": 2, "zero_stage": 3}
    path = tmp_path_factory.mktemp("recipe") / "pair.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _render(recipe: Path, run: Path, *extra: str) -> Path:
    result = lfx("render", str(recipe), "-o", str(run), *extra)
    assert result.exit_code == 0, result.stderr
    return run


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "WORLD_SIZE", "NPROC_PER_NODE")}  # fmt: skip
    # Each node's `lfx check` step is tested in test_launch.py and by the demo; here the nodes' meeting is.
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", LFX_DEVICE="cpu", MIN_FREE_DISK_GB="1", PYTHONUNBUFFERED="1",
               LFX_SKIP_CHECK="1")  # fmt: skip
    env.update(extra)
    return env


def _script(run: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(run / "train_sft.sh")], env=env, capture_output=True, text=True, timeout=timeout)


BAD_NODE_SETTINGS = {
    "nnodes_not_a_number": ({"NNODES": "two"}, "NNODES='two' is not a positive integer"),
    "nnodes_zero": ({"NNODES": "0"}, "NNODES='0' is not a positive integer"),
    "node_rank_outside": ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "127.0.0.1"}, "NODE_RANK='2' is outside 0..1"),
    "node_rank_negative": ({"NODE_RANK": "-1"}, "NODE_RANK='-1' is outside 0..1"),
    "port_not_a_port": ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000' is not a port (1-65535)"),
    "port_text": ({"MASTER_PORT": "http"}, "MASTER_PORT='http' is not a port (1-65535)"),
    "worker_without_primary": ({"NNODES": "2", "NODE_RANK": "1"}, "NODE_RANK=1 needs MASTER_ADDR, the address of node 0"),
    "cluster_has_more_nodes": ({"NUM_NODES": "4", "NUM_TRAINERS": "1", "NODE_RANK": "0", "PRIMARY_ADDR": "127.0.0.1"},
                               "rendered for 2 node(s) x 1 GPU(s), here 4 x 1 (NUM_NODES, NUM_TRAINERS): re-render it with --nodes 4 --gpus 1"),
    "cluster_has_more_gpus": ({"NUM_NODES": "2", "NUM_TRAINERS": "8", "NODE_RANK": "0", "PRIMARY_ADDR": "127.0.0.1"},
                              "here 2 x 8 (NUM_NODES, NUM_TRAINERS): re-render it with --nodes 2 --gpus 8"),
}


@pytest.mark.parametrize("case", sorted(BAD_NODE_SETTINGS))
def test_bad_node_settings_refused_at_once_before_anything(case, two_node_recipe, tmp_path):
    run = _render(two_node_recipe, tmp_path / "run")
    settings, message = BAD_NODE_SETTINGS[case]
    start = time.monotonic()
    proc = _script(run, _env(OUTPUT_ROOT=str(tmp_path / "vol"), **settings), timeout=60)
    assert time.monotonic() - start < 10
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "vol").exists()


def test_a_worker_whose_primary_never_comes_refuses_within_the_timeout(two_node_recipe, tmp_path):
    run = _render(two_node_recipe, tmp_path / "run")
    env = _env(NNODES="2", NODE_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1", LFX_RENDEZVOUS_TIMEOUT="3",
               OUTPUT_ROOT=str(tmp_path / "vol"))  # fmt: skip
    start = time.monotonic()
    proc = _script(run, env)
    assert proc.returncode == 2 and time.monotonic() - start < 30
    assert "node 0 at 127.0.0.1:1 did not answer within 3 s" in proc.stderr
    assert not (tmp_path / "vol" / "output" / "adapter_model.safetensors").exists()


def test_a_primary_whose_workers_never_come_refuses_within_the_timeout(two_node_recipe, tmp_path):
    run = _render(two_node_recipe, tmp_path / "run")
    env = _env(NNODES="2", NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               LFX_RENDEZVOUS_TIMEOUT="3", OUTPUT_ROOT=str(tmp_path / "vol"))  # fmt: skip
    proc = _script(run, env)
    assert proc.returncode == 2
    assert "node(s) 1 did not join within 3 s" in proc.stderr


def test_nodes_started_from_different_renders_refuse_each_other(two_node_recipe, tmp_path):
    """Node 1 rendered with another learning rate: both stop before training, naming the mismatch."""
    first = _render(two_node_recipe, tmp_path / "a")
    second = _render(two_node_recipe, tmp_path / "b", "learning_rate=5e-4")
    port = str(_free_port())
    common = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "LFX_RENDEZVOUS_TIMEOUT": "30"}
    nodes = [subprocess.Popen([str(run / "train_sft.sh")], env=_env(NODE_RANK=str(rank), OUTPUT_ROOT=str(tmp_path / f"n{rank}"), **common),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
             for rank, run in enumerate((first, second))]
    results = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [2, 2]
    for _, err in results:
        assert "node 1 runs 'pair-" in err and "node 0 runs 'pair-" in err


def test_nodes_that_would_resume_from_different_steps_refuse_each_other(two_node_recipe, tmp_path):
    """Node 0's volume holds a complete checkpoint-2, node 1's none (no shared output folder)."""
    run = _render(two_node_recipe, tmp_path / "run")
    ckpt = tmp_path / "n0" / "output" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    # node 0 trained this very run before (its output folder carries the run's id), node 1 never did
    rid = json.loads((run / RUN_FILE).read_text())["run_id"]
    (ckpt.parent / identity.MARKER).write_text(rid + "\n")
    common = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "LFX_RENDEZVOUS_TIMEOUT": "30",
              "LFX_SKIP_CHECK": "1"}  # fmt: skip
    nodes = [subprocess.Popen([str(run / "train_sft.sh")], env=_env(NODE_RANK=str(rank), OUTPUT_ROOT=str(tmp_path / f"n{rank}"), **common),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
             for rank in (0, 1)]
    results = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [2, 2], results
    for _, err in results:
        assert "node 1 would resume from none, node 0 from step 2: every node must see the same checkpoints" in err


def test_lobby_refuses_two_nodes_with_one_rank():
    from llamafactory_ext.run.lobby import LobbyError, host, join

    port = _free_port()
    errors: list[str] = []

    def node(rank: int) -> None:
        try:
            join("127.0.0.1", port, rank, "run", 10)
        except LobbyError as err:
            errors.append(str(err))

    workers = [threading.Thread(target=node, args=(1,)) for _ in range(2)]
    for w in workers:
        w.start()
    with pytest.raises(LobbyError, match="two nodes say NODE_RANK 1"):
        host(port, 3, "run", 10)
    for w in workers:
        w.join(15)
    assert "two nodes say NODE_RANK 1" in errors


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How each pair of nodes is started: by hand with only NNODES, NODE_RANK and MASTER_ADDR (no port:
# the shared default), or with only the variables a RunPod Instant Cluster sets.
STARTS = {
    "by_hand": lambda rank, port: {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"},
    "runpod_cluster": lambda rank, port: {"NUM_NODES": "2", "NUM_TRAINERS": "1", "NODE_RANK": str(rank),
                                          "PRIMARY_ADDR": "127.0.0.1", "PRIMARY_PORT": port, "WORLD_SIZE": "2",
                                          "NODE_ADDR": "127.0.0.1"},  # fmt: skip
}


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
@pytest.mark.parametrize("start", sorted(STARTS))
def test_every_start_gives_every_launcher_the_cluster(start, launcher, two_node_recipe, tmp_path):
    """The dry run on node 1 of a cluster at a pod's private address: both launch commands name the primary,
    its port and each node's rank (the real rendezvous below runs each start and each launcher once)."""
    run = _render(two_node_recipe, tmp_path / "run", "--launcher", launcher)
    variables = STARTS[start](1, "29555")
    if start == "by_hand":
        variables = {**variables, "MASTER_ADDR": "10.65.0.2", "MASTER_PORT": "29555"}
    else:
        variables = {**variables, "PRIMARY_ADDR": "10.65.0.2", "NODE_ADDR": "10.65.0.3"}
    proc = subprocess.run([str(run / "train_sft.sh"), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env=_env(OUTPUT_ROOT=str(tmp_path / "volume"), **variables))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [line for line in proc.stdout.splitlines() if line.startswith("node ") and " would run: " in line]
    assert len(commands) == 2, proc.stdout
    for rank, command in enumerate(commands):
        assert "--master_addr 10.65.0.2 --master_port 29555" in command and f"--node_rank {rank}" in command, command
        assert ("--nnodes 2" in command) if launcher == "torchrun" else ("--no_ssh" in command), command


# Each start and each launcher once in a real rendezvous (every pair is checked in the dry run above).
@pytest.mark.parametrize("start,launcher", [("by_hand", "torchrun"), ("runpod_cluster", "deepspeed")])
def test_two_loopback_nodes_on_separate_volumes_train_and_each_save(start, launcher, two_node_recipe, tmp_path):
    run = _render(two_node_recipe, tmp_path / "run", "--launcher", launcher)
    port = str(_free_port())
    nodes = [
        subprocess.Popen([str(run / "train_sft.sh")],
                         env=_env(OUTPUT_ROOT=str(tmp_path / f"node{rank}"), LFX_RENDEZVOUS_TIMEOUT="120", **STARTS[start](rank, port)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "world size: 2" in logs[0]
    if start == "by_hand":
        assert "meeting the other nodes at 127.0.0.1:29500" in logs[1]
    assert (tmp_path / "node0" / "output" / "adapter_model.safetensors").is_file()
    assert all("each node has its own" in log for log in logs)  # separate volumes: every node saves
    for rank in (0, 1):
        assert (tmp_path / f"node{rank}" / "output" / "checkpoint-2" / "trainer_state.json").is_file()


def _pair(run: Path, volume, port: str, timeout: int = 600, **extra: str) -> list[tuple[int, str]]:
    """Both nodes of `run`, node r writing to volume(r); (return code, output) of each."""
    nodes = [
        subprocess.Popen([str(run / "train_sft.sh")],
                         env=_env(OUTPUT_ROOT=str(volume(rank)), LFX_RENDEZVOUS_TIMEOUT="120", NNODES="2", NODE_RANK=str(rank),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for rank in (0, 1)
    ]
    return [(node.wait(timeout=timeout), node.communicate()[0]) for node in nodes]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_nodes_on_one_shared_volume_save_once_and_resume_together(launcher, two_node_recipe, tmp_path):
    """A RunPod Instant Cluster with one network volume: the nodes find out they share OUTPUT_ROOT, only one
    saves (each step once in the loss log, one writer per checkpoint file); a restart after a save cut short
    sets the checkpoint aside once and every node resumes from the one before."""
    import json

    run = _render(two_node_recipe, tmp_path / "run", "--launcher", launcher, "max_steps=4", "save_steps=2")
    volume = tmp_path / "volume"
    results = _pair(run, lambda rank: volume, str(_free_port()))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    for _, log in results:
        assert "the nodes share" in log and "node 0 alone saves" in log
    out = volume / "output"
    steps = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]  # fmt: skip
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # A save killed midway at step 4, the run's final files never written: restart both nodes.
    weights = out / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for item in out.iterdir():
        if not item.name.startswith(("checkpoint-", ".lfx_run_id")):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    results = _pair(run, lambda rank: volume, str(_free_port()))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    for _, log in results:
        assert f"resuming from {out}/checkpoint-2" in log
    assert (out / ".incomplete" / "checkpoint-4").is_dir() and not (out / ".incomplete" / "checkpoint-4.2").exists()
    steps = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]  # fmt: skip
    assert steps == [3, 4]
