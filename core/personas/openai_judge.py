"""A judge behind any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, core.personas.serve).

Connection settings come from arguments or the environment: ``PREFLENS_JUDGE_BASE_URL`` (e.g.
``http://127.0.0.1:8000/v1``), ``PREFLENS_JUDGE_MODEL`` and ``PREFLENS_JUDGE_API_KEY``. The key is
held in memory only: never put in config.json, results, logs or this object's repr.
Requests use the chat-completions API, greedy (temperature 0), with a timeout, retries with
exponential backoff on connection errors / 429 / 5xx, and at most ``concurrency`` in flight.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ENV_BASE_URL = "PREFLENS_JUDGE_BASE_URL"
ENV_MODEL = "PREFLENS_JUDGE_MODEL"
ENV_API_KEY = "PREFLENS_JUDGE_API_KEY"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeRequestError(RuntimeError):
    pass


class OpenAIJudge:
    supports_logits = False
    ACCEPTS = ("base_url", "api_key", "timeout", "retries", "backoff", "concurrency")

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, concurrency: int = 4):
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/")
        if not self.base_url:
            raise ValueError(f"OpenAI-compatible judge: set {ENV_BASE_URL} (e.g. http://127.0.0.1:8000/v1)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAI-compatible judge: base URL must start with http:// or https://, got {self.base_url!r}")
        self.model = model or os.environ.get(ENV_MODEL) or "default"
        self._api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.concurrency = max(1, int(concurrency))
        self.name = f"openai:{self.model}@{self.base_url}"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def _post(self, path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code not in RETRY_STATUS:
                    raise JudgeRequestError(f"{self.base_url}{path}: {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        raise JudgeRequestError(f"{self.base_url}{path}: gave up after {self.retries + 1} tries ({last})")

    def chat(self, system: str, user: str, max_tokens: int) -> str:
        data = self._post("/chat/completions", {
            "model": self.model, "temperature": 0, "max_tokens": int(max_tokens),
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"{self.base_url}/chat/completions: unexpected reply shape") from None

    def generate(self, prefix: str, suffixes: list[str], max_new_tokens: int = 64) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda s: self.chat(prefix, s, max_new_tokens), suffixes))
