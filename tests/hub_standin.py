"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's create_repo, create_commit,
upload_folder and upload_file, and as strict as the Hub where lfx upload meets it:

- repo creation (a new model repo holds the Hub's default `.gitattributes`), the model card's metadata check,
  repo info;
- the preupload endpoint answers as the Hub does: "lfs" for a file its `.gitattributes` sends to LFS, for a binary
  file (a NUL byte in the sample huggingface_hub sends) and for one of 10 MiB or more, "regular" otherwise; with
  the stored file's id (sha256 for LFS, git's sha1 for a regular file), so an unchanged file is not sent again;
- Git LFS's batch API (upload and verify actions, none for an object the Hub already holds), the upload itself
  (its sha256 checked against the object id) and the verify call;
- commits of regular files, LFS pointers and deletions; a binary or 10 MiB regular file is refused (the Hub
  rejects such pushes), and so is a pointer to an object that was never uploaded.

Writes need a token (Authorization: Bearer ...), as on the Hub. Every request is recorded (method, path,
Authorization header) so tests can check what was sent.

huggingface_hub sends LFS files through Xet (hf_xet's own storage protocol) when hf_xet is installed; the
stand-in speaks Git LFS, which the Hub accepts too, so the tests set HF_HUB_DISABLE_XET=1 (tests/conftest.py).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REGULAR_MAX = 10 * 1024 * 1024  # the Hub refuses larger regular files
# The .gitattributes the Hub writes into a new model repo.
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel", "*.model",
    "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
    "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
    "*tfevents*")).encode()  # fmt: skip


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_tracked(gitattributes: bytes, path: str) -> bool:
    """Whether a `.gitattributes` sends `path` to LFS (a pattern without '/' matches the file's name anywhere)."""
    for line in gitattributes.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or "filter=lfs" not in parts[1:]:
            continue
        pattern = parts[0]
        target = path if "/" in pattern else path.rsplit("/", 1)[-1]
        if fnmatch.fnmatch(target, pattern.replace("**/", "*")):
            return True
    return False


class HubStandin:
    def __init__(self) -> None:
        # repo_id -> {"private": bool, "files": {path: bytes}, "lfs": {paths stored in LFS}, "commits": [msg]}
        self.repos: dict[str, dict] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content: what the LFS storage holds
        self.requests: list[dict] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _record(self, method: str) -> None:
                standin.requests.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization")})

            def _unauthorized(self) -> bool:
                if (self.headers.get("Authorization") or "").startswith("Bearer "):
                    return False
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return True

            def do_PUT(self):
                body = self._body()
                self._record("PUT")
                match = re.match(r"^/lfs-upload/([0-9a-f]{64})$", self.path)
                if not match:
                    return self._reply(404, {"error": f"not found: {self.path}"})
                if hashlib.sha256(body).hexdigest() != match.group(1):
                    return self._reply(400, {"error": "the uploaded content does not match its oid"})
                standin.lfs_objects[match.group(1)] = body
                return self._reply(200, {})

            def do_POST(self):
                body = self._body()
                self._record("POST")
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":  # model card metadata check
                    return self._reply(200, {"errors": [], "warnings": []})
                if self._unauthorized():
                    return None
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                    url = f"http://{self.headers['Host']}/{repo_id}"
                    if repo_id in standin.repos:
                        return self._reply(409, {"error": "You already created this model repo", "url": url})
                    private = payload["visibility"] != "public" if "visibility" in payload else payload.get("private")
                    standin.repos[repo_id] = {"private": private, "files": {".gitattributes": GITATTRIBUTES}, "lfs": set(),
                                              "commits": []}  # fmt: skip
                    return self._reply(200, {"url": url, "name": repo_id})
                lfs = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)$", path)
                if lfs:
                    if lfs.group(1) not in standin.repos:
                        return self._reply(404, {"error": f"repository not found: {lfs.group(1)}"})
                    return self._lfs(lfs.group(1), lfs.group(2), json.loads(body))
                match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)$", path)
                if not match or match.group(1) not in standin.repos:
                    return self._reply(404, {"error": f"not found: {path}"})
                repo = standin.repos[match.group(1)]
                if match.group(2) == "preupload":
                    return self._reply(200, {"files": [self._mode(repo, f) for f in json.loads(body)["files"]]})
                return self._commit(
                    match.group(1), repo, [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                )

            def _mode(self, repo: dict, file: dict) -> dict:
                """The Hub's answer for one file: LFS or regular, and the id of what it holds there now."""
                path, sample = file["path"], base64.b64decode(file.get("sample") or "")
                lfs = (
                    lfs_tracked(repo["files"].get(".gitattributes", b""), path) or b"\0" in sample or file["size"] >= REGULAR_MAX
                )
                stored = repo["files"].get(path)
                if stored is None:
                    oid = None
                else:
                    oid = hashlib.sha256(stored).hexdigest() if path in repo["lfs"] else git_oid(stored)
                return {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

            def _lfs(self, repo_id: str, action: str, payload: dict):
                base = f"http://{self.headers['Host']}"
                if action == "verify":
                    content = standin.lfs_objects.get(payload.get("oid"))
                    if content is None or len(content) != payload.get("size"):
                        return self._reply(404, {"message": "object not uploaded"})
                    return self._reply(200, {})
                objects = []
                for obj in payload["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in standin.lfs_objects:
                        entry["authenticated"] = True
                        entry["actions"] = {"upload": {"href": f"{base}/lfs-upload/{obj['oid']}"},
                                            "verify": {"href": f"{base}/{repo_id}.git/info/lfs/objects/verify"}}  # fmt: skip
                    objects.append(entry)
                return self._reply(200, {"transfer": "basic", "objects": objects})

            def _commit(self, repo_id: str, repo: dict, lines: list[dict]):
                files, lfs = dict(repo["files"]), set(repo["lfs"])
                for line in lines:
                    value = line.get("value") or {}
                    if line["key"] == "file":
                        content = base64.b64decode(value["content"])
                        if b"\0" in content[:8000] or len(content) >= REGULAR_MAX:
                            return self._reply(400, {"error": f"Your push was rejected because it contains binary or large files "
                                                              f"({value['path']}). Please use LFS or Xet to store them."})  # fmt: skip
                        files[value["path"]] = content
                        lfs.discard(value["path"])
                    elif line["key"] == "lfsFile":
                        content = standin.lfs_objects.get(value["oid"])
                        if content is None or len(content) != value["size"]:
                            return self._reply(422, {"error": f"Your push was rejected because an LFS pointer pointed to a file "
                                                              f"that does not exist ({value['path']})"})  # fmt: skip
                        files[value["path"]] = content
                        lfs.add(value["path"])
                    elif line["key"] == "deletedFile":
                        files.pop(value["path"], None)
                        lfs.discard(value["path"])
                    elif line["key"] == "deletedFolder":
                        prefix = value["path"].rstrip("/") + "/"
                        files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                        lfs = {p for p in lfs if not p.startswith(prefix)}
                    elif line["key"] != "header":
                        return self._reply(400, {"error": f"unsupported commit line {line['key']}"})
                repo["files"], repo["lfs"] = files, lfs
                repo["commits"].append(lines[0]["value"]["summary"])
                oid = hashlib.sha1(str(len(repo["commits"])).encode()).hexdigest()
                return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}", "commitOid": oid})

            def do_GET(self):
                self._record("GET")
                match = re.match(r"^/api/models/([^/]+/[^/]+)(/revision/[^?]+)?", self.path)
                if match and match.group(1) in standin.repos:
                    repo = standin.repos[match.group(1)]
                    sha = hashlib.sha1(str(len(repo["commits"])).encode()).hexdigest()
                    return self._reply(200, {"id": match.group(1), "sha": sha, "private": repo["private"],
                                             "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})  # fmt: skip
                return self._reply(404, {"error": f"not found: {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandin":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
