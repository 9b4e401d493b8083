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


def test_no_engine_means_the_shipped_one_but_not_for_the_native_baseline():
    """Like ask and profile, eval runs the shipped demo engine when given neither --model nor --engine; --native
    is refused there, since the shipped policy asks for crops a native pass never serves."""
    from edge_awares.api import DEMO_ENGINE, demo_engine

    if demo_engine() is None:
        pytest.skip("this checkout has no shipped demo engine")
    assert EvalConfig(data="x").validate().engine == str(DEMO_ENGINE)
    with pytest.raises(ConfigError, match="--native needs --engine or --model of a base model"):
        EvalConfig(data="x", native=True).validate()
