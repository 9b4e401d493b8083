"""The evaluation harness: accuracy, RTR, request/parse rates and histogram from known scripted outputs."""

import json

import pytest

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.format import Sample, write_samples
from edge_awares.errors import ConfigError, DataError
from edge_awares.evaluate import EvalConfig, evaluate
from edge_awares.protocols import get_protocol
from edge_awares.session import Session
from edge_awares.tiny import make_tokenizer
from edge_awares.tokenizer import TextTokenizer
from edge_awares.views import Geometry

from conftest import make_doc
from fakes import ScriptedBackend

CALL = '<tool_call>{"name": "crop", "arguments": {"regions": ["3"]}}</tool_call>'


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    img = d / "p.png"
    make_doc(448, 448).save(img)
    samples = [Sample(id=f"s{i}", image=str(img), question="q", answers=["AB3"]) for i in range(4)]
    return write_samples(d / "samples.jsonl", samples, image_dir=None)


def test_scores_and_rates(data, tmp_path):
    tok = TextTokenizer(make_tokenizer())
    # every sample: request crop 3, then answer AB3 -> accuracy 1, request rate 1
    be = ScriptedBackend(tok, [CALL, "AB3"])
    s = Session(be, tok, get_protocol("tool_call"), AWARES_CROPS, Geometry())
    out = tmp_path / "rec.jsonl"
    rep = evaluate(EvalConfig(data=str(data), model="unused", out=str(out)), session=s, progress=False)
    assert rep.n == 4 and rep.accuracy == 1.0 and rep.request_rate == 1.0 and rep.parse_rate == 1.0
    assert rep.crop_histogram == {"3": 4}
    assert 0.4 < rep.rtr < 0.6  # low-res (~0.25) + one quadrant (~0.25)
    assert len(out.read_text().splitlines()) == 4 and json.loads(out.read_text().splitlines()[0])["score"] == 1.0
    # answering wrong from low-res: accuracy 0, no requests
    be = ScriptedBackend(tok, ["XYZ"])
    s = Session(be, tok, get_protocol("tool_call"), AWARES_CROPS, Geometry())
    rep = evaluate(EvalConfig(data=str(data), model="unused"), session=s, progress=False)
    assert rep.accuracy == 0.0 and rep.request_rate == 0.0 and rep.crop_histogram == {}
    rep = evaluate(EvalConfig(data=str(data), model="unused", native=True), session=s, progress=False)
    assert rep.rtr == pytest.approx(1.0)


def test_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        EvalConfig(data="x", model="m", engine="e").validate()
    with pytest.raises(ConfigError, match="metric"):
        EvalConfig(data="x", model="m", metric="bleu").validate()
    with pytest.raises(DataError):
        evaluate(EvalConfig(data=str(tmp_path / "none.jsonl"), model="m"), session=object(), progress=False)


def test_no_engine_means_the_shipped_policy_and_for_baselines_the_shipped_base(monkeypatch, tmp_path):
    """Like ask and profile, eval runs the shipped demo engine when given neither --model nor --engine; the paper's
    baselines (--native, --crops none) run the shipped base model's engine, and are refused where none ships."""
    import edge_awares.api as api

    if api.demo_engine() is None:
        pytest.skip("this checkout has no shipped demo engine")
    assert EvalConfig(data="x").validate().engine == str(api.DEMO_ENGINE)
    assert EvalConfig(data="x", crops="3").validate().engine == str(api.DEMO_ENGINE)
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setattr(api, "DEMO_BASE_ENGINE", base)
    with pytest.raises(ConfigError, match="ships no demo base engine"):
        EvalConfig(data="x", native=True).validate()
    (base / "manifest.json").write_text("{}")
    assert EvalConfig(data="x", native=True).validate().engine == str(base)
    assert EvalConfig(data="x", crops="None").validate().engine == str(base)


def test_trainer_validation_and_eval_share_one_aggregation(tmp_path):
    """The figures a training run logs (train/evaluate.py) are eval's, from the same records: parse rate, request
    rates by label, crop counts, evidence hits."""
    from edge_awares.data.metrics import get_metric
    from edge_awares.train.evaluate import EvalItem, evaluate_session

    img = tmp_path / "p.png"
    make_doc(448, 448).save(img)
    boxes = [(300, 300, 320, 320), (10, 10, 20, 20), (300, 300, 320, 320), None]
    samples = [Sample(id=f"s{i}", image=str(img), question="q", answers=["AB3"], evidence_box=b,
                      needs_detail=i % 2 == 0) for i, b in enumerate(boxes)]
    path = write_samples(tmp_path / "samples.jsonl", samples, image_dir=None)
    tok = TextTokenizer(make_tokenizer())

    # per sample: fetch crop 3 and answer; a garbled call (a parse failure: the whole image) and answer; answer
    # directly; fetch crop 3 and answer wrong
    runs = [[CALL, "AB3"], ["<tool_call>{oops</tool_call>", "AB3"], ["AB3"], [CALL, "no"]]

    class PerRun(ScriptedBackend):
        def new_cache(self, capacity):
            self.run = getattr(self, "run", -1) + 1
            self.scripts = [tok.encode_markup(t) + [tok.token_id("<|im_end|>")] for t in runs[self.run]]
            return super().new_cache(capacity)

    def session():
        return Session(PerRun(tok, ["x"]), tok, get_protocol("tool_call"), AWARES_CROPS, Geometry())

    rep = evaluate(EvalConfig(data=str(path), model="unused"), session=session(), progress=False)
    items = [EvalItem(s.id, str(img), s.question, tuple(s.answers), s.needs_detail, s.evidence_box) for s in samples]
    val = evaluate_session(session(), items, get_metric("exact"))
    want = rep.flat("val/")
    assert {k: v for k, v in val.items() if "latency" not in k} == {k: v for k, v in want.items() if "latency" not in k}
    assert rep.crop_histogram == {"3": 2, "all": 1} and rep.parse_rate == pytest.approx(2 / 3)
    assert rep.hr_request_rate == 0.5 and rep.lr_request_rate == 1.0 and rep.lowres_only_rate == 0.25
    # fetched: s0 crop 3 (holds its box), s1 all (holds any box), s3 crop 3 (no box): 2 of 2 located hits
    assert rep.evidence_hit_rate == 1.0
    assert rep.accuracy == 0.75 and rep.accuracy_detail == 1.0 and rep.accuracy_coarse == 0.5
    assert val["val/crops/all"] == 1 and val["val/parse_rate"] == pytest.approx(2 / 3)
