"""The language-model judges: `OpenAIJudge` (an instruction LLM behind an OpenAI-compatible server, asked as
the reference asks) and `LocalJudge` (a transformers causal LM, the choice letter with the highest next-token
logit); and `make_judge`, which builds the one of the three judges (these two or `RuleJudge`) that the
command-line options name."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from groundscope.evaluate.dlc.judging import DlcJudgeError, Judge, build_prompt
from groundscope.evaluate.dlc.questions import LETTERS, Question
from groundscope.evaluate.dlc.rules import RuleJudge

JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 300  # the reference's limit; a compliant judge answers in a handful of tokens


class OpenAIJudge:
    """An instruction LLM behind an OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp server,
    OpenAI ...), asked as the reference asks: one user message with `build_prompt`, temperature 0,
    top_p 1, at most 300 tokens.

    Args:
        url: the server, ``http://host:port``; a trailing ``/v1`` or the full ``.../chat/completions`` works too.
        model: the served model name (``meta-llama/Meta-Llama-3.1-8B-Instruct`` for the reference numbers).
        api_key: sent as ``Authorization: Bearer``; local servers usually need none.
        timeout: seconds per request.
        retries: further tries after a connection error, a timeout, 429 or 5xx, waiting ``backoff * 2**k`` s.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, *, timeout: float = 120.0,
                 retries: int = 3, backoff: float = 2.0, max_tokens: int = JUDGE_MAX_TOKENS) -> None:
        if not re.match(r"https?://", url):
            raise ValueError(f"judge url must start with http:// or https://, got {url!r}")
        base = url.rstrip("/")
        if base.endswith("/chat/completions"):
            self.endpoint = base
        elif base.endswith("/v1"):
            self.endpoint = base + "/chat/completions"
        else:
            self.endpoint = base + "/v1/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.name = f"openai:{model}@{self.endpoint}"

    def request_body(self, prompt: str) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": JUDGE_TEMPERATURE, "max_tokens": self.max_tokens, "top_p": 1,
                "frequency_penalty": 0, "presence_penalty": 0}

    def reply(self, description: str, question: Question) -> str:
        body = json.dumps(self.request_body(build_prompt(description, question))).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if (e.code == 429 or e.code >= 500) and attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise DlcJudgeError(f"judge {self.endpoint} answered HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise DlcJudgeError(f"cannot reach the judge at {self.endpoint}: {reason} (is the server up? "
                                    f"check --judge-url)") from None
        try:
            return json.loads(payload)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            text = payload[:300].decode("utf-8", "replace")
            raise DlcJudgeError(f"judge {self.endpoint} sent no chat completion (choices[0].message.content): "
                                f"{text}") from None


class LocalJudge:
    """A transformers causal LM as judge, deterministic: the prompt (through the tokenizer's chat template
    when it has one) is run once and the reply is the choice letter whose token has the highest next-token
    logit, among the question's letters only (greedy decoding restricted to a valid answer; ties go to the
    earlier letter). A letter's logit is the larger of its bare and space-prefixed tokens ("A", " A").

    Args:
        model_path: a local model directory (or hub id, where the hub is reachable).
        device: ``cpu``, ``cuda`` ...
        dtype: torch dtype name (``bfloat16``) or ``None`` for the checkpoint's default.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", dtype: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
            self.model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs).to(device).eval()
        except (OSError, ValueError, AttributeError) as e:
            raise DlcJudgeError(f"cannot load judge model {str(model_path)!r}: {e}") from None
        self.device = device
        self.name = f"local:{model_path}"
        self._letter_ids: list[list[int]] = []

    def letter_token_ids(self, n: int) -> list[list[int]]:
        """Candidate token ids of letters A.. (first ``n``); letters that share a token cannot be told apart."""
        while len(self._letter_ids) < n:
            letter = LETTERS[len(self._letter_ids)]
            ids = set()
            for text in (letter, " " + letter):
                tokens = self.tokenizer.encode(text, add_special_tokens=False)
                if tokens:
                    ids.add(tokens[0])
            self._letter_ids.append(sorted(ids))
        out = self._letter_ids[:n]
        seen: dict[int, str] = {}
        for k, ids in enumerate(out):
            for i in ids:
                if i in seen and seen[i] != LETTERS[k]:
                    raise DlcJudgeError(f"judge tokenizer maps letters {seen[i]} and {LETTERS[k]} to the same "
                                        f"token {i}; choose a judge model whose tokenizer keeps letters apart")
                seen[i] = LETTERS[k]
        return out

    def _encode(self, prompt: str):
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            return {k: v.to(self.device) for k, v in ids.items()}
        return {k: v.to(self.device) for k, v in tok(prompt, return_tensors="pt").items()}

    def reply(self, description: str, question: Question) -> str:
        letters = self.letter_token_ids(len(question.choices))
        with self.torch.inference_mode():
            logits = self.model(**self._encode(build_prompt(description, question))).logits[0, -1].float()
        scores = [max(float(logits[i]) for i in ids) for ids in letters]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        return LETTERS[best]


def make_judge(*, url: str | None = None, model: str | None = None, api_key: str | None = None,
               local: str | Path | None = None, rules: bool = False, device: str = "cpu") -> Judge:
    """The one judge the options name (``url`` + ``model``, ``local``, or ``rules``); a ValueError says what to
    pass otherwise."""
    chosen = [name for name, on in (("--judge-url", url is not None), ("--judge-local", local is not None),
                                    ("--judge rules", rules)) if on]
    if len(chosen) != 1:
        what = "none" if not chosen else " and ".join(chosen)
        raise ValueError(f"give exactly one judge: --judge-url URL --judge-model NAME, --judge-local PATH, or "
                         f"--judge rules (got {what})")
    if url is not None:
        if not model:
            raise ValueError("--judge-url needs --judge-model NAME (the served model, e.g. "
                             "meta-llama/Meta-Llama-3.1-8B-Instruct)")
        return OpenAIJudge(url, model, api_key)
    if local is not None:
        return LocalJudge(local, device=device)
    return RuleJudge()
