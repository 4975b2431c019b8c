"""A bounded meeting of the nodes before the launcher starts, on MASTER_ADDR:MASTER_PORT.

Left to themselves, torchrun and the deepspeed launcher wait for missing nodes for 10 to 30 minutes
and then end with a store traceback; nodes started with different settings (another node count, a
re-rendered recipe) meet and fail later or, worse, train. Here node 0 listens on the rendezvous port,
every other node connects and says who it is and what it runs; node 0 answers `go` once every node has
come with matching settings, then closes the port for the launcher to take. Any node that is missing,
unreachable or mismatched ends every waiting node with one line, within the timeout.

Each node also says which checkpoint step it would resume from (`none` for a fresh start): nodes that
do not see the same checkpoints are stopped here, before the launcher, where they would otherwise
deadlock in the checkpoint load or train out of step.

And the nodes find out whether they share OUTPUT_ROOT (a cluster's network volume): node 0 writes a
random marker there before it listens, each node says what it reads there once it reaches node 0, and
every node learns `shared` (all read node 0's marker) or `separate` (none does); a mix is refused. On a
shared volume one node saves (save_on_each_node false); on separate volumes every node does.

Standard library only: `python -m llamafactory_ext.run.lobby ADDR PORT NODES RANK TIMEOUT IDENTITY RESUME
OUTPUT_ROOT`, which prints `shared` or `separate`.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

MARKER = ".lfx_volume"


class LobbyError(Exception):
    pass


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn: socket.socket, deadline: float) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return json.loads(data)


def _read_marker(root: Path | None) -> str | None:
    try:
        return (root / MARKER).read_text(encoding="utf-8").strip() if root else None
    except OSError:
        return None


def host(port: int, nodes: int, identity: str, timeout: float, resume: str = "none", root: Path | None = None) -> bool:
    """Node 0: wait for nodes 1..N-1 with the same identity and resume point, then tell them all to go.
    Returns whether every node shares `root` with node 0."""
    deadline = time.monotonic() + timeout
    token = secrets.token_hex(16)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text(token + "\n", encoding="utf-8")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as err:
        raise LobbyError(f"node 0 cannot listen on port {port} ({err.strerror}): another run holds it? set MASTER_PORT") from None
    server.listen(nodes)
    joined: dict[int, socket.socket] = {}
    volumes: dict[int, bool] = {}
    try:
        while len(joined) < nodes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, nodes)) - set(joined))
                raise LobbyError(f"node(s) {', '.join(map(str, missing))} did not join within {timeout:.0f} s on port "
                                 f"{port}: start train_sft.sh on every node with NODE_RANK, the same MASTER_ADDR "
                                 "(this node's address) and MASTER_PORT")  # fmt: skip
            server.settimeout(min(left, 1.0))
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            try:
                hello = _receive(conn, min(deadline, time.monotonic() + 10))
            except (OSError, ValueError):
                conn.close()
                continue
            problem = None
            if hello.get("identity") != identity:
                problem = f"node {hello.get('rank')} runs '{hello.get('identity')}', node 0 runs '{identity}'"
            elif not isinstance(hello.get("rank"), int) or not 0 < hello["rank"] < nodes:
                problem = f"a node says NODE_RANK {hello.get('rank')}, outside 1..{nodes - 1}"
            elif hello["rank"] in joined:
                problem = f"two nodes say NODE_RANK {hello['rank']}"
            elif hello.get("resume", "none") != resume:
                # Ranks resuming from different steps would deadlock in the checkpoint load or train out of step.
                problem = (f"node {hello['rank']} would resume from {hello.get('resume')}, node 0 from {resume}: every node "
                           "must see the same checkpoints (a shared OUTPUT_ROOT, or save_on_each_node: true)")
            if problem:
                _send(conn, {"error": problem})
                conn.close()
                for other in joined.values():
                    _send(other, {"error": problem})
                raise LobbyError(problem)
            joined[hello["rank"]] = conn
            volumes[hello["rank"]] = hello.get("volume") == token
        if len(set(volumes.values())) > 1:
            sharing = sorted(r for r, same in volumes.items() if same)
            problem = (f"node(s) {', '.join(map(str, sharing))} share OUTPUT_ROOT with node 0, the others do not: give every "
                       "node the same volume, or each its own")
            for conn in joined.values():
                _send(conn, {"error": problem})
            raise LobbyError(problem)
        shared = all(volumes.values()) if volumes else False
        for conn in joined.values():
            _send(conn, {"go": True, "shared": shared})
        # Let the workers hang up first, so the closed connections linger (TIME_WAIT) on their side
        # and the launcher can take this port at once.
        for conn in joined.values():
            conn.settimeout(5)
            try:
                conn.recv(1)
            except OSError:
                pass
    finally:
        for conn in joined.values():
            conn.close()
        server.close()
        if root is not None:
            try:
                os.unlink(root / MARKER)
            except OSError:
                pass
    return shared


def join(addr: str, port: int, rank: int, identity: str, timeout: float, resume: str = "none",
         root: Path | None = None) -> bool:  # fmt: skip
    """Nodes 1..N-1: reach node 0 (retrying until the timeout), say who we are and what we read in `root`,
    wait for go. Returns whether the nodes share `root`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            break
        except OSError as err:
            if time.monotonic() >= deadline:
                raise LobbyError(f"node 0 at {addr}:{port} did not answer within {timeout:.0f} s ({err.strerror or err}): "
                                 "start NODE_RANK=0 with the same MASTER_PORT, and check MASTER_ADDR") from None  # fmt: skip
            time.sleep(1.0)
    with conn:
        # Node 0 wrote its marker before listening: reached now, a shared volume shows it.
        _send(conn, {"rank": rank, "identity": identity, "resume": resume, "volume": _read_marker(root)})
        try:
            answer = _receive(conn, deadline)
        except (OSError, ValueError):
            raise LobbyError(f"node 0 at {addr}:{port} gave no go within {timeout:.0f} s (other nodes missing?)") from None
    if "error" in answer:
        raise LobbyError(answer["error"])
    return bool(answer.get("shared"))


def main(argv: list[str]) -> int:
    if len(argv) != 8:
        print("usage: python -m llamafactory_ext.run.lobby ADDR PORT NODES RANK TIMEOUT IDENTITY RESUME OUTPUT_ROOT",
              file=sys.stderr)  # fmt: skip
        return 2
    addr, port, nodes, rank, timeout, identity = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]), argv[5]
    resume, root = argv[6], Path(argv[7])
    try:
        if rank == 0:
            shared = host(port, nodes, identity, timeout, resume, root)
        else:
            shared = join(addr, port, rank, identity, timeout, resume, root)
    except LobbyError as err:
        print(f"train_sft.sh: error: {err}", file=sys.stderr)
        return 2
    print("shared" if shared else "separate")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
