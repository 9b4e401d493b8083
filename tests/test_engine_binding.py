"""The runtime binds what the manifest records: graph tensor names by role, and the stop tokens."""

import json
import shutil

import pytest

from edge_awares.api import DEMO_ENGINE
from edge_awares.errors import EngineError
from edge_awares.manifest import seal
from edge_awares.runtimes import open_engine_session
from edge_awares.runtimes.onnx import DECODER_INPUTS

pytestmark = pytest.mark.skipif(not (DEMO_ENGINE / "manifest.json").is_file(), reason="no shipped demo engine")


def _engine(tmp_path, edit):
    e = tmp_path / "engine"
    shutil.copytree(DEMO_ENGINE, e)
    data = json.loads((e / "manifest.json").read_text())
    edit(data)
    (e / "manifest.json").write_text(json.dumps(seal(data)))
    return e


def test_stop_tokens_come_from_the_manifest(tmp_path):
    s = open_engine_session(DEMO_ENGINE)
    assert s.stop_ids == {s.tok.token_id("<|im_end|>"), s.tok.token_id("<|endoftext|>")}
    e = _engine(tmp_path, lambda d: d["generation"].__setitem__("stop_tokens", ["<|im_end|>"]))
    assert open_engine_session(e).stop_ids == {s.tok.token_id("<|im_end|>")}


def test_graph_names_are_bound_from_the_manifest(tmp_path):
    s = open_engine_session(DEMO_ENGINE)
    assert list(s.backend._dec_in) == list(DECODER_INPUTS)
    e = _engine(tmp_path, lambda d: d["graphs"]["decoder"]["inputs"].pop())
    with pytest.raises(EngineError, match="graphs.decoder.inputs should list 4 tensor names"):
        open_engine_session(e)


def test_special_token_ids_are_checked_against_the_tokenizer(tmp_path):
    e = _engine(tmp_path, lambda d: d["special_tokens"].__setitem__("<|im_end|>", d["special_tokens"]["<|im_start|>"]))
    with pytest.raises(EngineError, match=r"the tokenizer gives <\|im_end\|> id \d+, the manifest records \d+"):
        open_engine_session(e)
