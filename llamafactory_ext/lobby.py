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

Standard library only: `python -m llamafactory_ext.lobby ADDR PORT NODES RANK TIMEOUT IDENTITY RESUME`.
"""

from __future__ import annotations

import json
import socket
import sys
import time


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


def host(port: int, nodes: int, identity: str, timeout: float, resume: str = "none") -> None:
    """Node 0: wait for nodes 1..N-1 with the same identity and resume point, then tell them all to go."""
    deadline = time.monotonic() + timeout
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as err:
        raise LobbyError(f"node 0 cannot listen on port {port} ({err.strerror}): another run holds it? set MASTER_PORT") from None
    server.listen(nodes)
    joined: dict[int, socket.socket] = {}
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
        for conn in joined.values():
            _send(conn, {"go": True})
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


def join(addr: str, port: int, rank: int, identity: str, timeout: float, resume: str = "none") -> None:
    """Nodes 1..N-1: reach node 0 (retrying until the timeout), say who we are, wait for go."""
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
        _send(conn, {"rank": rank, "identity": identity, "resume": resume})
        try:
            answer = _receive(conn, deadline)
        except (OSError, ValueError):
            raise LobbyError(f"node 0 at {addr}:{port} gave no go within {timeout:.0f} s (other nodes missing?)") from None
    if "error" in answer:
        raise LobbyError(answer["error"])


def main(argv: list[str]) -> int:
    if len(argv) != 7:
        print("usage: python -m llamafactory_ext.lobby ADDR PORT NODES RANK TIMEOUT IDENTITY RESUME", file=sys.stderr)
        return 2
    addr, port, nodes, rank, timeout, identity = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4]), argv[5]
    resume = argv[6]
    try:
        if rank == 0:
            host(port, nodes, identity, timeout, resume)
        else:
            join(addr, port, rank, identity, timeout, resume)
    except LobbyError as err:
        print(f"train_sft.sh: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
