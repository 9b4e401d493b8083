"""Benchmark loaders on tiny fixtures: column mapping per benchmark, JSONL / parquet / save_to_disk sources,
images as bytes or paths, splits, and typed errors."""

import importlib.util
import io
import json

import pytest
from PIL import Image

from edge_awares.data.format import Sample, write_samples
from edge_awares.data.loaders import BENCHMARKS, iter_benchmark, load_benchmark
from edge_awares.errors import ConfigError, DataError

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed")
needs_datasets = pytest.mark.skipif(not HAVE_DATASETS, reason="datasets is not installed")


def _png(colour="red", size=(20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# Rows as the benchmarks' usual Hugging Face copies hold them (one row each).
ROWS = {
    "chartqa": {"query": "How many bars?", "label": ["4"], "image": {"bytes": _png(), "path": None}},
    "docvqa": {"questionId": 57, "question": "What is the date?", "answers": ["May 3", "3 May"],
               "image": {"bytes": _png(), "path": None}},
    "textvqa": {"question_id": 9, "question": "What brand?", "answers": ["nike", "nike", "Nike"],
                "image": {"bytes": _png(), "path": None}},
    "pope": {"question_id": "p1", "question": "Is there a dog in the image?", "answer": "yes",
             "image": {"bytes": _png(), "path": None}},
    "vstar": {"question_id": 3, "question": "What colour is the cup?", "options": ["red", "blue", "green", "white"],
              "answer": "blue", "image": {"bytes": _png(), "path": None}},
}
EXPECTED = {
    "chartqa": ("How many bars?", ["4"]),
    "docvqa": ("What is the date?", ["May 3", "3 May"]),
    "textvqa": ("What brand?", ["nike", "Nike"]),
    "pope": ("Is there a dog in the image?", ["yes"]),
    "vstar": ("What colour is the cup?\n(A) red\n(B) blue\n(C) green\n(D) white", ["B"]),
}


def _jsonl(path, rows):
    def enc(v):
        return {"bytes": None, "path": v["path"]} if isinstance(v, dict) else v
    path.write_text("".join(json.dumps({k: enc(v) for k, v in r.items()}) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@needs_pyarrow
@pytest.mark.parametrize("name", sorted(ROWS))
def test_parquet_column_mapping(tmp_path, name):
    path = _parquet(tmp_path / "test-00000-of-00001.parquet", [ROWS[name]])
    [s] = load_benchmark(name, path)
    question, answers = EXPECTED[name]
    assert (s.question, s.answers, s.source) == (question, answers, name)
    assert isinstance(s.image, Image.Image) and s.image.size == (20, 10)
    assert s.load_image().getpixel((0, 0)) == (255, 0, 0)
    if name == "vstar":
        assert s.meta["options"] == ["red", "blue", "green", "white"]


def test_ids_come_from_the_benchmark_or_the_row_index(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(_png())
    rows = [{"question_id": 9, "question": "q1", "answers": ["x"], "image": "a.png"},
            {"question": "q2", "answers": ["y"], "image": "a.png"}]
    s = load_benchmark("textvqa", _jsonl(tmp_path / "t.jsonl", rows))
    assert [x.id for x in s] == ["9", "textvqa-1"]
    assert s[0].image == str(tmp_path / "a.png")  # a path stays a path, resolved against the file's folder


def test_our_jsonl_format_round_trips_through_the_loader(tmp_path):
    sample = Sample("s0", Image.new("RGB", (8, 8)), "What is the code?", ["K7P"], evidence_box=(1, 1, 5, 5),
                    needs_detail=True, crop_ids=["0"], source="synth")
    path = write_samples(tmp_path / "d" / "samples.jsonl", [sample])
    [back] = load_benchmark("samples", tmp_path / "d")  # a folder holding one JSONL works too
    assert (back.id, back.answers, back.crop_ids, back.needs_detail, back.source) == \
           ("s0", ["K7P"], ["0"], True, "synth")
    assert back.evidence_box == (1, 1, 5, 5)
    assert Image.open(back.image).size == (8, 8)
    assert load_benchmark("jsonl", path)[0].id == "s0"


def test_vstar_answer_forms(tmp_path):
    base = {"question": "Which?", "options": ["cat", "dog"], "image": "x.png"}
    rows = [{**base, "id": "a", "answer": 1}, {**base, "id": "b", "answer": "(A)"},
            {**base, "id": "c", "answer": "dog"}]
    got = [s.answers for s in load_benchmark("v*", _jsonl(tmp_path / "v.jsonl", rows))]
    assert got == [["B"], ["A"], ["B"]]
    # lmms-eval's copy: inline options in `text`, the letter in `label`.
    row = {"text": "Which? (A) cat (B) dog", "label": "A", "image": "x.png"}
    [s] = load_benchmark("vstar", _jsonl(tmp_path / "w.jsonl", [row]))
    assert s.question == "Which? (A) cat (B) dog" and s.answers == ["A"]


def test_hidden_answers_and_limit(tmp_path):
    rows = [{"questionId": i, "question": f"q{i}", "answers": None, "image": "x.png"} for i in range(5)]
    samples = list(iter_benchmark("docvqa", _jsonl(tmp_path / "d.jsonl", rows), limit=3))
    assert len(samples) == 3 and samples[0].answers == []


@needs_pyarrow
def test_image_cache_stores_each_image_once(tmp_path):
    page = _png("blue")
    rows = [{"questionId": i, "question": f"q{i}", "answers": ["a"], "image": {"bytes": page, "path": None}}
            for i in range(3)]
    path = _parquet(tmp_path / "docvqa.parquet", rows)
    samples = load_benchmark("docvqa", path, image_cache=tmp_path / "cache")
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".png"
    assert {s.image for s in samples} == {str(files[0])}


@needs_pyarrow
def test_parquet_folder_splits(tmp_path):
    (tmp_path / "data").mkdir()
    _parquet(tmp_path / "data" / "test-00000-of-00002.parquet", [{**ROWS["pope"], "question_id": "t0"}])
    _parquet(tmp_path / "data" / "test-00001-of-00002.parquet", [{**ROWS["pope"], "question_id": "t1"}])
    _parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [{**ROWS["pope"], "question_id": "r0"}])
    assert [s.id for s in load_benchmark("pope", tmp_path, split="test")] == ["t0", "t1"]
    assert [s.id for s in load_benchmark("pope", tmp_path, split="train")] == ["r0"]
    with pytest.raises(DataError, match="several splits"):
        load_benchmark("pope", tmp_path)
    with pytest.raises(DataError, match="splits found: test, train"):
        load_benchmark("pope", tmp_path, split="validation")


@needs_datasets
def test_save_to_disk_folder(tmp_path):
    import datasets

    rows = [ROWS["chartqa"], {**ROWS["chartqa"], "query": "Which is largest?", "label": ["B"]}]
    features = datasets.Features({"query": datasets.Value("string"),
                                  "label": datasets.Sequence(datasets.Value("string")), "image": datasets.Image()})
    ds = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    ds.save_to_disk(str(tmp_path / "single"))
    for folder in ("dd", "single"):
        samples = load_benchmark("chartqa", tmp_path / folder)
        assert [s.answers for s in samples] == [["4"], ["B"]]
        assert samples[1].question == "Which is largest?" and samples[0].load_image().size == (20, 10)
    with pytest.raises(DataError, match="splits: test"):
        load_benchmark("chartqa", tmp_path / "dd", split="train")


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_benchmark("docvqa", tmp_path / "missing")
    with pytest.raises(ConfigError, match="chartqa"):
        load_benchmark("mmmu", tmp_path)
    bad = _jsonl(tmp_path / "b.jsonl", [{"query": "q", "image": "x.png"}])
    with pytest.raises(DataError, match="no answer column"):
        load_benchmark("chartqa", bad)
    empty_q = _jsonl(tmp_path / "e.jsonl", [{"question": "q", "answer": "y", "image": "x.png"},
                                           {"question": "", "answer": "y", "image": "x.png"}])
    with pytest.raises(DataError, match=r"e\.jsonl:2: empty or missing question"):
        load_benchmark("pope", empty_q)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_benchmark("pope", tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jsonl, .parquet"):
        load_benchmark("pope", tmp_path / "empty")


def test_every_benchmark_has_a_fixture():
    assert set(BENCHMARKS) == set(ROWS) | {"samples"}
