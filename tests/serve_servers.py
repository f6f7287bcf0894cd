"""The servers tests/test_serve.py talks to: ``llmcore serve`` in a subprocess, or the same app in a thread.

Importable as ``serve_servers`` (pytest puts tests/ on sys.path); it needs the serve extra, so only a test
module that has checked for it (``pytest.importorskip``) imports it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

from llmcore.models import TransformerLM
from llmcore.tokenizer import load_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m llmcore serve`` in a subprocess; ``ready()`` waits for /health, ``stop()`` ends it."""

    def __init__(self, model_dir: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llmcore", "serve", "--model", str(model_dir), "--port", str(self.port),
               "--threads", "1", *flags]
        self.proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ready(self) -> Server:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not answer /health within 90 s")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, obj, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else json.dumps(obj).encode()
        return self.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})

    def client(self, key: str = "unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ThreadServer(Server):
    """The same application on uvicorn in a thread of this process (no second torch import to wait for):
    ``build_service`` + ``create_app`` + ``bind``, what ``llmcore serve`` runs after parsing its flags."""

    def __init__(self, model_dir: Path, **settings) -> None:
        import threading

        import uvicorn

        from llmcore.serve.app import create_app
        from llmcore.serve.protocol import Limits
        from llmcore.serve.server import bind, build_service

        rows, limit = settings.pop("max_batch_rows"), settings.pop("max_tokens_limit")
        self.service = build_service(TransformerLM.from_pretrained(model_dir), load_tokenizer(model_dir), "tiny",
                                     max_batch_rows=rows, limits=Limits(max_tokens=limit, max_n=rows), **settings)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service), log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.proc = None

    def ready(self) -> Server:
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.engine.stop()
