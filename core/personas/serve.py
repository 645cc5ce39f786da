"""A small OpenAI-compatible server for a local transformers judge (stdlib http.server).

    python -m core.personas.serve --port 8011 [--model default] [--host 127.0.0.1] [--no-logprobs]

Serves ``GET /v1/models``, ``POST /v1/chat/completions`` (system + user messages, greedy) and
``POST /v1/completions`` (raw prompt text, greedy). If ``PREFLENS_SERVE_API_KEY`` is set, requests
must send it as a Bearer token. Binds to 127.0.0.1 unless told otherwise. One forward at a time;
requests queue on a lock (the judge batches within a request).

Chat completions follow the OpenAI API where PrefLens uses it:

- ``logprobs: true`` with ``top_logprobs: 0..20`` returns ``choices[0].logprobs.content``: per
  generated token its text, log-probability and bytes, and the ``top_logprobs`` likeliest tokens, all
  from the local model's next-token distribution (before any sampling: the reply is greedy).
  ``--no-logprobs`` starts a server that ignores the request and sends ``"logprobs": null``, as servers
  without logprobs support do, so clients' fallbacks can be tested.
- A final ``assistant`` message is continued rather than answered (an assistant "prefill", as the
  llama.cpp server does; vLLM's ``continue_final_message`` flag is accepted too). The reply holds only
  the new text.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.common.cli import cli_main, report

ENV_SERVE_KEY = "PREFLENS_SERVE_API_KEY"


MAX_TOP_LOGPROBS = 20


def _token_entry(judge, token_id: int, logprob: float) -> dict:
    text = judge.token_text(token_id)
    return {"token": text, "logprob": round(float(logprob), 6), "bytes": list(text.encode("utf-8"))}


def logprobs_block(judge, steps: list) -> dict:
    """OpenAI's ``choices[i].logprobs`` object from (token id, logprob, [(id, logprob)]) steps."""
    content = []
    for tid, lp, alts in steps:
        entry = _token_entry(judge, tid, lp)
        entry["top_logprobs"] = [_token_entry(judge, a, alp) for a, alp in alts]
        content.append(entry)
    return {"content": content, "refusal": None}


def split_messages(msgs: list) -> tuple[str, str, str]:
    """(system text, user text, assistant prefill) from chat messages; a final assistant message is the prefill."""
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise ValueError("messages must be a list of objects")
    prefill = ""
    if msgs and msgs[-1].get("role") == "assistant":
        prefill = str(msgs[-1].get("content") or "")
        msgs = msgs[:-1]
    system = "\n".join(str(m.get("content") or "") for m in msgs if m.get("role") == "system")
    user = "\n".join(str(m.get("content") or "") for m in msgs if m.get("role") != "system")
    return system, user, prefill


def make_handler(judge, model_name: str, api_key: str | None, logprobs: bool = True):
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
                try:
                    system, user, prefill = split_messages(req.get("messages") or [])
                    want = bool(req.get("logprobs"))
                    top = int(req.get("top_logprobs") or 0)
                    if not 0 <= top <= MAX_TOP_LOGPROBS:
                        raise ValueError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}")
                    if top and not want:
                        raise ValueError("top_logprobs needs logprobs: true")
                except (ValueError, TypeError) as e:
                    return self._send(400, {"error": {"message": f"bad request: {e}"}})
                out = judge.generate_detailed(system, user, max_tokens, prefill=prefill, top_logprobs=top)
                choice = {"index": 0, "finish_reason": out["finish_reason"],
                          "message": {"role": "assistant", "content": out["text"]},
                          "logprobs": logprobs_block(judge, out["tokens"]) if want and logprobs else None}
                return self._send(200, {"id": f"chatcmpl-{created}", "object": "chat.completion", "created": created,
                                        "model": model_name, "choices": [choice],
                                        "usage": {"completion_tokens": len(out["tokens"])}})
            if path == "/v1/completions":
                prompt = req.get("prompt", "")
                prompt = prompt[0] if isinstance(prompt, list) and prompt else prompt
                text = judge.generate_raw(str(prompt), max_tokens)
                return self._send(200, {"id": f"cmpl-{created}", "object": "text_completion", "created": created,
                                        "model": model_name, "choices": [{"index": 0, "text": text,
                                                                          "finish_reason": "stop"}]})
            self._send(404, {"error": {"message": "not found"}})

    return Handler


@cli_main  # an expected error (a port in use, a judge that cannot be loaded offline): one "error: ..." line, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.personas.serve", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="default", help="judge: 'default' (bundled GGUF), a model id, folder or .gguf")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-logprobs", action="store_true",
                   help="answer without logprobs even when asked (\"logprobs\": null), like servers that lack them")
    args = p.parse_args(argv)
    from core.personas.judges import LocalJudge

    try:
        judge = LocalJudge(args.model, threads=args.threads)
    except (ValueError, RuntimeError) as err:  # an unknown judge, or a bundled one that is not installed
        return report(err)
    handler = make_handler(judge, judge.name, os.environ.get(ENV_SERVE_KEY), logprobs=not args.no_logprobs)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    mode = "without logprobs" if args.no_logprobs else "with logprobs"
    print(f"serving {judge.name} ({mode}) on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
