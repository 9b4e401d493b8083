"""Base-model pretraining (train/base.py): a few steps on CPU, the token layout equal to the runtime's."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from edge_awares.train.base import BaseRunConfig, train_base

    out = tmp_path_factory.mktemp("base") / "b"
    cfg = BaseRunConfig(output=str(out), steps=4, batch_size=2, warmup=1, eval_every=4, eval_n=2, threads=1)
    return train_base(cfg, log=lambda m: None)


def test_writes_a_loadable_checkpoint_with_its_record(base_run):
    from edge_awares.models import read_checkpoint
    from edge_awares.tokenizer import TextTokenizer

    info = read_checkpoint(base_run)
    rec = json.loads((base_run / "base_run.json").read_text())
    assert len(rec["loss"]) == 4 and all(np.isfinite(rec["loss"]))
    assert rec["evals"] and {"native/accuracy", "lowres/accuracy", "native/code"} <= set(rec["evals"][-1])
    assert 2.5e6 < rec["parameters"] < 4e6
    tok = TextTokenizer.from_file(info.path)
    # The tokenizer was trained on the task's text: a card question is a handful of tokens, digits one each.
    assert len(tok.encode("What is the code on the orange card?")) <= 12
    assert len(tok.encode("0621")) == 4


def test_examples_use_the_sessions_token_layout(base_run):
    """The prompt part of a training example is exactly what Session feeds the model for that view."""
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.cards import make_card_sample
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.session import Session
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.train.base import Encoder

    info = read_checkpoint(base_run)
    enc = Encoder(base_run)
    session = Session(TorchBackend(base_run), TextTokenizer.from_file(info.path), get_protocol("plain"),
                      AWARES_CROPS, info.geometry)
    s = make_card_sample(5, 0)
    for view in ("native", "lowres"):
        ex = enc.example(s.image, s.question, s.answers[0], view)
        r = session.run(s.image, s.question, crops="none", view=view, max_new_tokens=1)
        n_prompt = ex["labels"].index(next(v for v in ex["labels"] if v != -100))
        assert ex["ids"][:n_prompt] == r.ids[:n_prompt].tolist()
        assert int((r.mask == 0).sum()) == n_prompt  # the session's prompt is exactly that long
        assert ex["labels"][n_prompt:] == ex["ids"][n_prompt:]
        assert ex["ids"][-1] == enc.im_end
    batch = enc.batch([enc.example(s.image, s.question, s.answers[0], "native"),
                       enc.example(s.image, "Read the cards.", s.meta["reading"], "lowres")])
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16], [1, 8, 8]]
    assert batch["pixel_values"].shape[0] == 16 * 16 + 8 * 8


def test_bad_settings_are_config_errors(tmp_path):
    from edge_awares.errors import ConfigError
    from edge_awares.train.base import BaseRunConfig

    with pytest.raises(ConfigError):
        BaseRunConfig(output=str(tmp_path), native_share=1.5).validate()
    with pytest.raises(ConfigError):
        BaseRunConfig(output=str(tmp_path), steps=0).validate()
