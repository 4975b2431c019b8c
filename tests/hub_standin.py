"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's create_repo,
upload_folder and upload_file: repo creation, the model card's metadata check, the preupload endpoint (every file "regular",
with the stored file's git oid so unchanged files are skipped), commits (added and deleted files) and repo
info. A new repo holds a `.gitattributes`, as the Hub creates one.

It records every request (method, path, Authorization header) so tests can check what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubStandin:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "commits": [msg]}
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
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                body = self._body()
                standin.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization")})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                    url = f"http://{self.headers['Host']}/{repo_id}"
                    if repo_id in standin.repos:
                        return self._reply(409, {"error": "You already created this model repo", "url": url})
                    private = payload["visibility"] != "public" if "visibility" in payload else payload.get("private")
                    standin.repos[repo_id] = {"private": private, "files": {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                                              "commits": []}  # fmt: skip
                    return self._reply(200, {"url": url, "name": repo_id})
                if path == "/api/validate-yaml":  # model card metadata check
                    return self._reply(200, {"errors": [], "warnings": []})
                match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)$", path)
                if not match or match.group(1) not in standin.repos:
                    return self._reply(404, {"error": f"not found: {path}"})
                repo = standin.repos[match.group(1)]
                if match.group(2) == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                         "oid": git_oid(repo["files"][f["path"]]) if f["path"] in repo["files"] else None}
                        for f in files]})  # fmt: skip
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                for line in lines:
                    if line["key"] == "file":
                        repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] == "deletedFile":
                        repo["files"].pop(line["value"]["path"], None)
                    elif line["key"] == "deletedFolder":
                        prefix = line["value"]["path"].rstrip("/") + "/"
                        repo["files"] = {p: c for p, c in repo["files"].items() if not p.startswith(prefix)}
                    elif line["key"] != "header":
                        return self._reply(400, {"error": f"unsupported commit line {line['key']}"})
                repo["commits"].append(lines[0]["value"]["summary"])
                oid = hashlib.sha1(str(len(repo["commits"])).encode()).hexdigest()
                return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{match.group(1)}/commit/{oid}",
                                         "commitOid": oid})  # fmt: skip

            def do_GET(self):
                standin.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
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
