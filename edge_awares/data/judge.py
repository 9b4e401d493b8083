"""Curation judges: did the low-res view suffice? Each judge decides whether the base model's low-res answer
and its native answer are correct; one stated rule (`label_for`) turns that into the LR/HR label.

Rule judges (ANLS, exact, relaxed) are built in. LLM judges send one grading prompt to an OpenAI-compatible
endpoint (`OpenAIJudge`, plain urllib) or to a local text checkpoint (`LocalJudge`, transformers).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError, EdgeAwaresError

RULE_JUDGES = ("anls", "exact", "relaxed")
JUDGES = RULE_JUDGES + ("llm",)
BOTH_WRONG = ("lr", "hr", "drop")
# ANLS is continuous: 0.85 is the CARES cut-off for "answered at this resolution" (DESIGN.md §1); with it a
# one-character slip in a three-character code is wrong, while one slip in a ten-character answer is not.
# exact and relaxed scores are 0 or 1.
DEFAULT_THRESHOLDS = {"anls": 0.85, "exact": 1.0, "relaxed": 1.0}

ENV_URL = "EDGE_AWARES_JUDGE_URL"
ENV_MODEL = "EDGE_AWARES_JUDGE_MODEL"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class JudgeError(EdgeAwaresError):
    """An LLM judge could not be reached or answered with something that is not a chat completion."""


def label_for(low_res_ok: bool, native_ok: bool, both_wrong: str = "lr") -> str | None:
    """The curation label rule (AwaRes: LR if the low-res answer is judged correct or tied, else HR).

    - low-res answer correct                      -> "LR" (whatever the native answer is)
    - low-res wrong, native correct               -> "HR" (only here does resolution change the outcome)
    - both wrong (a tie: native does not help)    -> `both_wrong`: "lr" (default, the paper's tie rule),
      "hr" (treat as needing detail), or "drop" (returns None: no trajectory)
    """
    if low_res_ok:
        return "LR"
    if native_ok:
        return "HR"
    return None if both_wrong == "drop" else both_wrong.upper()


@dataclass
class Verdict:
    """One judgement. Scores are the rule metric's (None for an LLM reply that parsed)."""

    low_res_ok: bool
    native_ok: bool
    label: str | None
    low_res_score: float | None = None
    native_score: float | None = None
    raw: str = ""  # an LLM judge's reply
    fallback: bool = False  # the LLM reply did not parse: the rule judge decided

    def to_dict(self) -> dict:
        d = {"low_res_ok": self.low_res_ok, "native_ok": self.native_ok, "label": self.label,
             "low_res_score": self.low_res_score, "native_score": self.native_score}
        if self.raw:
            d["raw"] = self.raw
        if self.fallback:
            d["fallback"] = True
        return d


class Judge(ABC):
    """Decides correctness of the two answers; `judge` applies `label_for` with this judge's tie policy."""

    name = ""

    def __init__(self, both_wrong: str = "lr"):
        if both_wrong not in BOTH_WRONG:
            raise ConfigError(f"unknown both-wrong policy {both_wrong!r}; legal: {', '.join(BOTH_WRONG)}")
        self.both_wrong = both_wrong

    @abstractmethod
    def verdict(self, question: str, answers: Sequence[str], low_res_answer: str, native_answer: str) -> Verdict:
        ...

    def judge(self, question: str, answers: Sequence[str], low_res_answer: str, native_answer: str) -> str | None:
        """"LR", "HR", or None (both wrong under the "drop" policy)."""
        return self.verdict(question, answers, low_res_answer, native_answer).label


class RuleJudge(Judge):
    """Correct means metric(answer, answers) >= threshold, with metric one of anls, exact, relaxed."""

    def __init__(self, metric: str = "anls", threshold: float | None = None, both_wrong: str = "lr"):
        super().__init__(both_wrong)
        if metric not in RULE_JUDGES:
            raise ConfigError(f"unknown rule judge {metric!r}; legal: {', '.join(RULE_JUDGES)}")
        from .metrics import get_metric

        self.name = metric
        self.metric = get_metric(metric)
        self.threshold = DEFAULT_THRESHOLDS[metric] if threshold is None else float(threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"judge threshold {self.threshold} must be in (0, 1]")

    def verdict(self, question, answers, low_res_answer, native_answer) -> Verdict:
        s_lr = float(self.metric(low_res_answer, list(answers)))
        s_nat = float(self.metric(native_answer, list(answers)))
        lr_ok, nat_ok = s_lr >= self.threshold, s_nat >= self.threshold
        return Verdict(lr_ok, nat_ok, label_for(lr_ok, nat_ok, self.both_wrong), s_lr, s_nat)


# ----------------------------------------------------------------------------------------------- LLM judges
PROMPT = """You grade short answers to a question about an image.

Question: {question}
Reference answer(s): {references}

Answer 1: {first}
Answer 2: {second}

An answer is correct if it means the same as one of the references (ignore case, punctuation, formatting and
equivalent number or unit notation); partial, hedged or different answers are wrong.
Reply with JSON only: {{"1": "correct" or "wrong", "2": "correct" or "wrong"}}"""

_TRUE = {"correct", "true", "yes", "right", "1"}
_FALSE = {"wrong", "incorrect", "false", "no", "0"}


def parse_grades(text: str) -> tuple[bool, bool] | None:
    """(answer 1 correct, answer 2 correct) from a judge reply, or None if it does not say both.

    Takes the JSON object the prompt asks for, or lines such as "1: correct" / "Answer 2 - wrong".
    """
    grades: dict[str, bool] = {}
    m = re.search(r"\{[^{}]*\}", text, re.S)
    if m:
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = re.sub(r"\D", "", str(k))
                word = str(v).strip().lower()
                if key in ("1", "2") and (word in _TRUE or word in _FALSE or isinstance(v, bool)):
                    grades[key] = v if isinstance(v, bool) else word in _TRUE
    if len(grades) < 2:
        for key, word in re.findall(r"(?i)\b(?:answer\s*)?([12])\s*[:=\-)]\s*\"?([a-z]+)", text):
            word = word.lower()
            if word in _TRUE or word in _FALSE:
                grades.setdefault(key, word in _TRUE)
    if "1" in grades and "2" in grades:
        return grades["1"], grades["2"]
    return None


class LLMJudge(Judge):
    """Grades both answers in one prompt. Which answer came from which view is not said: the low-res answer is
    "Answer 1" and the native one "Answer 2" always, so a position bias shifts both classes alike.

    An unparseable reply falls back to `fallback` (a RuleJudge) and is marked, so reports can count it.
    """

    name = "llm"

    def __init__(self, fallback: RuleJudge | None = None, both_wrong: str = "lr"):
        super().__init__(both_wrong)
        self.fallback = fallback or RuleJudge("anls", both_wrong=both_wrong)

    @abstractmethod
    def complete(self, prompt: str) -> str:
        """The model's reply to one user message."""

    def prompt(self, question: str, answers: Sequence[str], low_res_answer: str, native_answer: str) -> str:
        refs = "; ".join(json.dumps(a, ensure_ascii=False) for a in answers)
        return PROMPT.format(question=question.strip(), references=refs,
                             first=json.dumps(low_res_answer.strip(), ensure_ascii=False),
                             second=json.dumps(native_answer.strip(), ensure_ascii=False))

    def verdict(self, question, answers, low_res_answer, native_answer) -> Verdict:
        reply = self.complete(self.prompt(question, answers, low_res_answer, native_answer))
        grades = parse_grades(reply)
        if grades is None:
            v = self.fallback.verdict(question, answers, low_res_answer, native_answer)
            v.label = label_for(v.low_res_ok, v.native_ok, self.both_wrong)  # this judge's tie policy rules
            v.raw, v.fallback = reply, True
            return v
        lr_ok, nat_ok = grades
        return Verdict(lr_ok, nat_ok, label_for(lr_ok, nat_ok, self.both_wrong), raw=reply)


@dataclass
class EndpointSettings:
    """Where an OpenAI-compatible chat endpoint lives. The API key is read from the environment variable
    `key_env` at call time (never stored in configs or reports); a server without auth needs none."""

    base_url: str
    model: str
    key_env: str = DEFAULT_KEY_ENV
    timeout_s: float = 60.0
    retries: int = 3
    max_tokens: int = 32
    extra_body: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, key_env: str | None = None,
                 **kw) -> "EndpointSettings":
        """Fill base URL and model from EDGE_AWARES_JUDGE_URL / EDGE_AWARES_JUDGE_MODEL when not given.

        Raises ConfigError naming what is missing.
        """
        base_url = base_url or os.environ.get(ENV_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise ConfigError(f"the llm judge needs an endpoint: --judge-url or ${ENV_URL} "
                              "(e.g. http://127.0.0.1:8000/v1), or --judge-checkpoint for a local model")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"judge URL {base_url!r} must start with http:// or https://")
        if not model:
            raise ConfigError(f"the llm judge needs a model name: --judge-model or ${ENV_MODEL}")
        return cls(base_url=base_url, model=model, key_env=key_env or DEFAULT_KEY_ENV, **kw)


class OpenAIJudge(LLMJudge):
    """POST {base_url}/chat/completions (temperature 0). Retries 429, 5xx and network errors with backoff;
    other HTTP errors and malformed responses raise JudgeError at once."""

    def __init__(self, settings: EndpointSettings, fallback: RuleJudge | None = None, both_wrong: str = "lr"):
        super().__init__(fallback, both_wrong)
        self.settings = settings
        self.calls = 0

    def complete(self, prompt: str) -> str:
        s = self.settings
        body = {"model": s.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": s.max_tokens, **s.extra_body}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(s.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = s.base_url.rstrip("/") + "/chat/completions"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            self.calls += 1
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers, method="POST"),
                                            timeout=s.timeout_s) as r:
                    payload = r.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace").replace("\n", " ")
                last = f"HTTP {e.code} from {url}: {detail}"
                if e.code == 429 or e.code >= 500:
                    continue
                raise JudgeError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"cannot reach {url}: {getattr(e, 'reason', e)}"
                continue
            try:
                return str(json.loads(payload)["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                raise JudgeError(f"{url} did not return a chat completion: {payload[:200]!r}") from None
        raise JudgeError(f"{last} (gave up after {s.retries + 1} attempts)")


class LocalJudge(LLMJudge):
    """A local Hugging Face checkpoint (text LLM, or a VLM asked text-only) run greedily with transformers.

    Loads on first use; the tokenizer's chat template renders the prompt (ChatML when it has none).
    """

    def __init__(self, checkpoint: str, fallback: RuleJudge | None = None, both_wrong: str = "lr",
                 max_new_tokens: int = 32):
        super().__init__(fallback, both_wrong)
        self.checkpoint, self.max_new_tokens = str(checkpoint), max_new_tokens
        self._model = self._tok = None

    def _load(self):
        if self._model is not None:
            return
        from pathlib import Path

        if not (Path(self.checkpoint) / "config.json").is_file():
            from ..errors import ModelLoadError

            raise ModelLoadError(f"{self.checkpoint}: not a Hugging Face checkpoint (no config.json)")
        try:
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer
        except ImportError:
            from ..errors import BackendUnavailableError

            raise BackendUnavailableError("the local llm judge needs transformers: pip install "
                                          "'edge-awares[torch]'") from None
        from ..models import load_pretrained

        # A VLM config has no causal-LM mapping; its image-text class generates text too. Safetensors only: a
        # judge folder with pickle weights raises ModelLoadError before anything is unpickled.
        model = load_pretrained((AutoModelForCausalLM, AutoModelForImageTextToText), self.checkpoint)
        self._tok = AutoTokenizer.from_pretrained(self.checkpoint)
        self._model = model.eval()

    def complete(self, prompt: str) -> str:
        self._load()
        import torch

        messages = [{"role": "user", "content": prompt}]
        if getattr(self._tok, "chat_template", None):
            text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        enc = self._tok(text, return_tensors="pt")
        with torch.inference_mode():
            out = self._model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id)
        return self._tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def make_judge(name: str, threshold: float | None = None, both_wrong: str = "lr", rule_metric: str = "anls",
               url: str | None = None, model: str | None = None, key_env: str | None = None,
               checkpoint: str | None = None) -> Judge:
    """A judge by name: anls, exact, relaxed, or llm (`checkpoint` given: local; else the endpoint `url`/`model`,
    falling back to the environment). `rule_metric` (with `threshold`) decides the llm judge's unparseable
    replies.

    Raises ConfigError for an unknown name or a missing endpoint setting.
    """
    if name in RULE_JUDGES:
        return RuleJudge(name, threshold, both_wrong)
    if name != "llm":
        raise ConfigError(f"unknown judge {name!r}; legal: {', '.join(JUDGES)}")
    fallback = RuleJudge(rule_metric, threshold, both_wrong)
    if checkpoint:
        return LocalJudge(checkpoint, fallback, both_wrong)
    return OpenAIJudge(EndpointSettings.from_env(url, model, key_env), fallback, both_wrong)
