"""A small OpenAI-compatible server for a local transformers judge (stdlib http.server).

    python -m core.personas.serve --port 8011 [--model default] [--host 127.0.0.1]

Serves ``GET /v1/models``, ``POST /v1/chat/completions`` (system + user messages, greedy) and
``POST /v1/completions`` (raw prompt text, greedy). If ``PREFLENS_SERVE_API_KEY`` is set, requests
must send it as a Bearer token. Binds to 127.0.0.1 unless told otherwise. One forward at a time;
requests queue on a lock (the judge batches within a request).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ENV_SERVE_KEY = "PREFLENS_SERVE_API_KEY"


def make_handler(judge, model_name: str, api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; never echo headers
            pass

        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if not api_key:
                return True
            got = self.headers.get("Authorization", "")
            return hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode())

        def do_GET(self):
            if not self._authorized():
                return self._send(401, {"error": {"message": "invalid API key"}})
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if not self._authorized():
                return self._send(401, {"error": {"message": "invalid API key"}})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(length) or b"{}")
                max_tokens = int(req.get("max_tokens") or 64)
                if not 1 <= max_tokens <= 2048:
                    raise ValueError("max_tokens must be in 1..2048")
            except (ValueError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            path = self.path.rstrip("/")
            created = int(time.time())
            if path == "/v1/chat/completions":
                msgs = req.get("messages") or []
                system = "\n".join(m.get("content", "") for m in msgs if m.get("role") == "system")
                user = "\n".join(m.get("content", "") for m in msgs if m.get("role") != "system")
                text = judge.generate(system, [user], max_tokens)[0]
                return self._send(200, {"id": f"chatcmpl-{created}", "object": "chat.completion", "created": created,
                                        "model": model_name, "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}]})
            if path == "/v1/completions":
                prompt = req.get("prompt", "")
                prompt = prompt[0] if isinstance(prompt, list) and prompt else prompt
                text = judge.generate_raw(str(prompt), max_tokens)
                return self._send(200, {"id": f"cmpl-{created}", "object": "text_completion", "created": created,
                                        "model": model_name, "choices": [{"index": 0, "text": text,
                                                                          "finish_reason": "stop"}]})
            self._send(404, {"error": {"message": "not found"}})

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.personas.serve", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="default", help="judge: 'default' (bundled GGUF), a model id, folder or .gguf")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    from .judges import LocalJudge

    judge = LocalJudge(args.model, threads=args.threads)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(judge, judge.name, os.environ.get(ENV_SERVE_KEY)))
    print(f"serving {judge.name} on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
