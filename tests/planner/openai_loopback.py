"""A real OpenAI-compatible HTTP server on loopback, answering from a script.

Tests queue answers (`answer_json`, `answer_status`, `answer_slowly`, `answer_raw`); each POST to
/v1/chat/completions takes the next one (the last one repeats once the script runs out) and is
recorded, parsed, in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: str = ""
    delay_s: float = 0.0


def completion(content: str) -> str:
    """A chat completion whose single choice says `content`."""
    return json.dumps(
        {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "loopback",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


@dataclass
class LoopbackOpenAI:
    script: list[Answer] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def answer_json(self, content: Any) -> None:
        """The model says `content` (a JSON-dumped object, or a string as is)."""
        text = content if isinstance(content, str) else json.dumps(content)
        self.script.append(Answer(body=completion(text)))

    def answer_status(self, status: int) -> None:
        self.script.append(Answer(status=status, body=json.dumps({"error": {"message": "boom"}})))

    def answer_slowly(self, delay_s: float, content: Any = "") -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        self.script.append(Answer(body=completion(text), delay_s=delay_s))

    def answer_raw(self, body: str) -> None:
        self.script.append(Answer(body=body))

    def _next(self) -> Answer:
        with self._lock:
            if not self.script:
                return Answer(status=500, body="{}")
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def start(self) -> LoopbackOpenAI:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with owner._lock:
                    owner.paths.append(self.path)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    owner.requests.append(json.loads(body or b"{}"))
                answer = owner._next()
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                data = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
