"""A local stand-in for the Hugging Face Hub: just the endpoints huggingface_hub 2.4's `create_repo` and
`upload_folder` call, on 127.0.0.1, recording what arrives.

- `POST /api/repos/create`: records the repo (name, namespace, visibility) and the bearer token that owns it
  (an existing repo: 409, as the Hub answers);
- `POST /api/validate-yaml`: accepts any model card (the real Hub checks its metadata);
- `POST /api/models/{repo}/preupload/{rev}`: answers "lfs" for binary files (safetensors, png), as the Hub does,
  and "regular" for text;
- `POST /{repo}.git/info/lfs/objects/batch`: the git-LFS batch API, basic transfer: one upload URL per object on
  this server (the Hub answers with a storage URL; the upload carries no token there either);
- `PUT /lfs-upload/{oid}`: stores the bytes after checking their sha256 against the oid;
- `POST /api/models/{repo}/commit/{rev}`: the NDJSON commit; text files arrive base64-encoded inline, LFS files
  by oid, which must have been uploaded; only the token that created the repo may commit (else 403).

Anything else is a 404 with the path recorded, so a test sees an endpoint it did not expect. The Hub's own
storage protocol (Xet) is not implemented: tests set `HF_HUB_DISABLE_XET` so huggingface_hub uses LFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubRecord:
    repos: dict = field(default_factory=dict)  # repo_id -> {"private": bool, "token": str}
    commits: list = field(default_factory=list)  # {"repo_id", "summary", "files": {path: bytes}, "token"}
    blobs: dict = field(default_factory=dict)  # sha256 -> bytes
    tokens: set = field(default_factory=set)  # every bearer token seen
    unexpected: list = field(default_factory=list)  # "METHOD path" of requests no route answered


def _handler(record: HubRecord, base: list):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                record.tokens.add(auth[7:])
                return auth[7:]
            return None

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, payload) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):  # noqa: N802 - http.server's naming
            m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", self.path)
            data = self._body()
            if not m or hashlib.sha256(data).hexdigest() != m.group(1):
                return self._reply(400, {"error": "content does not match its oid"})
            record.blobs[m.group(1)] = data
            self._reply(200, {})

        def do_POST(self):  # noqa: N802
            path, body = self.path.split("?")[0], self._body()
            token = self._token()
            if path == "/api/repos/create":
                if token is None:
                    return self._reply(401, {"error": "no token"})
                req = json.loads(body)
                repo_id = f"{req.get('organization') or 'user'}/{req['name']}"
                if repo_id in record.repos:  # the Hub's answer; huggingface_hub's exist_ok=True accepts it
                    return self._reply(
                        409, {"error": "You already created this model repo", "url": f"{base[0]}/{repo_id}"}
                    )
                record.repos[repo_id] = {"private": req.get("visibility") == "private", "token": token}
                return self._reply(200, {"url": f"{base[0]}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
            if m and m.group(1) not in record.repos:
                return self._reply(404, {"error": "Repository not found"})
            if m and m.group(2) == "preupload":
                files = json.loads(body)["files"]
                binary = (".safetensors", ".png", ".bin")
                modes = [
                    {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(binary) else "regular"} for f in files
                ]
                return self._reply(200, {"files": [{**f, "shouldIgnore": False} for f in modes]})
            if m and m.group(2) == "commit":
                return self._commit(m.group(1), body, token)
            m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
            if m:
                objects = json.loads(body)["objects"]
                actions = [
                    {
                        "oid": o["oid"],
                        "size": o["size"],
                        "actions": {"upload": {"href": f"{base[0]}/lfs-upload/{o['oid']}"}},
                    }
                    for o in objects
                ]
                return self._reply(200, {"transfer": "basic", "objects": actions})
            record.unexpected.append(f"POST {path}")
            self._reply(404, {"error": "not in the stand-in"})

        def do_GET(self):  # noqa: N802
            record.unexpected.append(f"GET {self.path}")
            self._reply(404, {"error": "not in the stand-in"})

        def _commit(self, repo_id: str, body: bytes, token: str | None):
            if token is None or token != record.repos[repo_id]["token"]:
                return self._reply(403, {"error": "not allowed"})
            files, summary = {}, ""
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value["summary"]
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in record.blobs:
                        return self._reply(400, {"error": f"LFS object of {value['path']} was never uploaded"})
                    files[value["path"]] = record.blobs[value["oid"]]
            record.commits.append({"repo_id": repo_id, "summary": summary, "files": files, "token": token})
            oid = hashlib.sha1(body).hexdigest()
            self._reply(200, {"commitUrl": f"{base[0]}/{repo_id}/commit/{oid}", "commitOid": oid})

    return Handler


def start_hub() -> tuple[ThreadingHTTPServer, str, HubRecord]:
    """Start the stand-in on a free loopback port; returns (server, base URL, record). Call server.shutdown()."""
    record, base = HubRecord(), [""]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(record, base))
    base[0] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, base[0], record
