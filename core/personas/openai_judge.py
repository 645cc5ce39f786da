"""A judge behind any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, OpenAI, core.personas.serve).

Connection settings come from arguments or the environment: ``PREFLENS_JUDGE_BASE_URL`` (e.g.
``http://127.0.0.1:8000/v1``), ``PREFLENS_JUDGE_MODEL`` and ``PREFLENS_JUDGE_API_KEY``. The key is
held in memory only: never put in config.json, results, logs or this object's repr.
Requests use the chat-completions API, greedy (temperature 0), with a timeout, retries with
exponential backoff on connection errors / 429 / 5xx, and at most ``concurrency`` in flight.

Grades and A/B answers from log-probabilities. When the server returns ``logprobs`` (asked with
``logprobs: true, top_logprobs: N``), ``rating_probs`` and ``choice_probs`` read them the way the local
judge reads its logits: the cue (e.g. "My grades.\nTruthfulness:") is put at the start of the
assistant's reply (a final assistant message that the server continues: "prefill"), and the grade
texts " -2" .. " 2" are followed token by token through the returned ``top_logprobs`` (at each step the
longest listed token that starts the remaining text, e.g. " -" then "2"), then renormalized over the
grades. A/B answers sum every listed token that reads as the letter (" A", "A", "a"). Tokens outside
the top N count as 0, so the result can differ slightly from the full distribution.

Where the server sends no logprobs (or ``PREFLENS_JUDGE_LOGPROBS=off``), both return None after the
first try and callers fall back to parsing generated text; ``probs_status()`` says which. Prefill
styles (``PREFLENS_JUDGE_PREFILL``): ``message`` (default: a final assistant message is continued, as
the llama.cpp server and core.personas.serve do), ``vllm`` (also sends ``continue_final_message: true,
add_generation_prompt: false``), ``none`` (the server cannot continue a reply, e.g. OpenAI: grades fall
back to text, A/B without a prefill still uses logprobs).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.personas.answers import RATINGS, ChoiceResult, RatingResult, grade_text, normalize, option_key

ENV_BASE_URL = "PREFLENS_JUDGE_BASE_URL"
ENV_MODEL = "PREFLENS_JUDGE_MODEL"
ENV_API_KEY = "PREFLENS_JUDGE_API_KEY"
ENV_LOGPROBS = "PREFLENS_JUDGE_LOGPROBS"
ENV_PREFILL = "PREFLENS_JUDGE_PREFILL"
PREFILL_STYLES = ("message", "vllm", "none")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeRequestError(RuntimeError):
    pass


class _NoLogprobs(Exception):
    pass


class OpenAIJudge:
    supports_logits = False  # no model or tokenizer here; probabilities come from rating_probs / choice_probs
    ACCEPTS = ("base_url", "api_key", "timeout", "retries", "backoff", "concurrency", "logprobs", "top_logprobs",
               "prefill")

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, concurrency: int = 4,
                 logprobs: str | None = None, top_logprobs: int = 20, prefill: str | None = None):
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
        self.logprobs = (logprobs or os.environ.get(ENV_LOGPROBS) or "auto").lower()
        if self.logprobs not in ("auto", "off"):
            raise ValueError(f"OpenAI-compatible judge: {ENV_LOGPROBS} must be 'auto' or 'off', got {self.logprobs!r}")
        self.prefill = (prefill or os.environ.get(ENV_PREFILL) or "message").lower()
        if self.prefill not in PREFILL_STYLES:
            raise ValueError(f"OpenAI-compatible judge: {ENV_PREFILL} must be one of {PREFILL_STYLES}, "
                             f"got {self.prefill!r}")
        if not 1 <= int(top_logprobs) <= 20:
            raise ValueError(f"OpenAI-compatible judge: top_logprobs must be in 1..20, got {top_logprobs}")
        self.top_logprobs = int(top_logprobs)
        self.logprobs_available: bool | None = None if self.logprobs == "auto" else False
        self.requests = {"text": 0, "logprobs": 0}
        self._count_lock = threading.Lock()

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

    def _complete(self, system: str, user: str, max_tokens: int, *, prefill: str = "",
                  top_logprobs: int | None = None) -> tuple[str, list | None]:
        """(reply text, the reply's ``logprobs.content`` list or None)."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        payload: dict = {"model": self.model, "temperature": 0, "max_tokens": int(max_tokens), "messages": messages}
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
            if self.prefill == "vllm":
                payload.update(continue_final_message=True, add_generation_prompt=False)
        if top_logprobs is not None:
            payload.update(logprobs=True, top_logprobs=int(top_logprobs))
        with self._count_lock:
            self.requests["logprobs" if top_logprobs is not None else "text"] += 1
        data = self._post("/chat/completions", payload)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"{self.base_url}/chat/completions: unexpected reply shape") from None
        content = choice.get("logprobs") if isinstance(choice, dict) else None
        content = content.get("content") if isinstance(content, dict) else None
        return text, content if isinstance(content, list) else None

    def chat(self, system: str, user: str, max_tokens: int) -> str:
        return self._complete(system, user, max_tokens)[0]

    def generate(self, prefix: str, suffixes: list[str], max_new_tokens: int = 64) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda s: self.chat(prefix, s, max_new_tokens), suffixes))

    # -- log-probabilities
    def probs_status(self) -> str:
        """'logprobs' (the server sends them), 'unknown' (not asked yet) or why they are not used."""
        if self.logprobs == "off":
            return f"off ({ENV_LOGPROBS}=off)"
        if self.logprobs_available is False:
            return "the server returned no logprobs"
        return "logprobs" if self.logprobs_available else "unknown"

    def _top_lists(self, system: str, user: str, prefill: str, depth: int) -> list[tuple[str, dict[str, float]]]:
        """Per generated position: (generated token, {listed token: probability}); raises _NoLogprobs."""
        if self.logprobs_available is False:
            raise _NoLogprobs()
        _, content = self._complete(system, user, depth, prefill=prefill, top_logprobs=self.top_logprobs)
        if not content or not isinstance(content[0], dict) or not content[0].get("top_logprobs"):
            self.logprobs_available = False
            raise _NoLogprobs()
        self.logprobs_available = True
        levels = []
        for entry in content:
            probs: dict[str, float] = {}
            for alt in entry.get("top_logprobs") or []:
                try:
                    tok, lp = str(alt["token"]), float(alt["logprob"])
                except (KeyError, TypeError, ValueError):
                    continue
                probs[tok] = probs.get(tok, 0.0) + math.exp(lp)  # one text from several token ids adds up
            levels.append((str(entry.get("token", "")), probs))
        return levels

    def _grade_mass(self, system: str, user: str, cue: str) -> np.ndarray:
        """Unnormalized P(grade text right after ``cue``) for each grade, following the grade texts
        through the listed tokens (longest listed token that starts what is left, at every step)."""
        raw = np.zeros(len(RATINGS))

        def explore(consumed: str, remaining: dict[int, str], prob: float, levels=None):
            levels = levels or self._top_lists(system, user, cue + consumed, depth=2)
            generated, top = levels[0]
            groups: dict[str, dict[int, str]] = {}
            for idx, rest in remaining.items():
                best = max((t for t in top if t and rest.startswith(t)), key=len, default=None)
                if best is None:
                    continue  # this grade's next token is not among the listed ones: counts as 0
                if best == rest:
                    raw[idx] += prob * top[best]
                else:
                    groups.setdefault(best, {})[idx] = rest[len(best):]
            for tok, sub in groups.items():
                # the reply's next position already lists what follows the token it generated
                known = levels[1:] if tok == generated and len(levels) > 1 else None
                explore(consumed + tok, sub, prob * top[tok], known)

        explore("", {i: grade_text(r) for i, r in enumerate(RATINGS)}, 1.0)
        return raw

    def rating_probs_many(self, pairs: list[tuple[str, str]], cues: list[str]) -> RatingResult | None:
        """Grades from the server's top_logprobs (see the module text), or None where it gives none."""
        if self.logprobs_available is False or self.prefill == "none":
            return None
        tasks = [(i, c) for i in range(len(pairs)) for c in range(len(cues))]
        raw = np.zeros((len(pairs), len(cues), len(RATINGS)))

        def one(task):
            i, c = task
            raw[i, c] = self._grade_mass(pairs[i][0], pairs[i][1], cues[c])

        try:
            first = 1 if self.logprobs_available is None and tasks else 0
            if first:  # learn whether the server sends logprobs before sending the rest
                one(tasks[0])
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                list(pool.map(one, tasks[first:]))
        except _NoLogprobs:
            return None
        probs, mass = normalize(raw)
        return RatingResult(probs=probs, mass=mass, source="logprobs")

    def rating_probs(self, prefix: str, suffixes: list[str], cues: list[str]) -> RatingResult | None:
        return self.rating_probs_many([(prefix, s) for s in suffixes], cues)

    def choice_probs_many(self, pairs: list[tuple[str, str]], options=("A", "B"),
                          prefill: str = "") -> ChoiceResult | None:
        """P(option) of the first reply token (after ``prefill``), summed over listed tokens that read as
        the option, renormalized over the options; None where the server gives no logprobs."""
        if self.logprobs_available is False or (prefill and self.prefill == "none"):
            return None
        keys = [option_key(o) for o in options]
        raw = np.zeros((len(pairs), len(options)))

        def one(i):
            _, top = self._top_lists(pairs[i][0], pairs[i][1], prefill, depth=1)[0]
            for tok, p in top.items():
                k = option_key(tok)
                if k in keys:
                    raw[i, keys.index(k)] += p

        try:
            first = 1 if self.logprobs_available is None and pairs else 0
            if first:
                one(0)
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                list(pool.map(one, range(first, len(pairs))))
        except _NoLogprobs:
            return None
        probs, mass = normalize(raw)
        return ChoiceResult(probs=probs, mass=mass, options=tuple(options), source="logprobs")

    def choice_probs(self, prefix: str, suffixes: list[str], options=("A", "B"),
                     prefill: str = "") -> ChoiceResult | None:
        return self.choice_probs_many([(prefix, s) for s in suffixes], options, prefill)
