"""The fp32 ONNX engine reproduces the PyTorch reference token for token, turn by turn: two checkpoint
shapes, every protocol, the model's own policy and forced crops, images of several aspect ratios. Also the
pieces underneath: batched vision of mixed sizes, the in-place KV cache, rewind and overflow."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_doc

from _engine_fixtures import *  # noqa: F401,F403  (fixtures)
from _engine_fixtures import open_onnx, open_torch

pytest.importorskip("torch")

SIZES = [(640, 480), (300, 900), (1000, 250)]
PROTOCOLS = ["tool_call", "awares", "ergo"]
CROPS = ["model", "0,4", "all"]


@pytest.fixture(scope="module")
def sessions(tiny_ckpt, tiny2_ckpt, tiny_engine, tiny2_engine):
    """(torch, onnx) session pairs per (checkpoint, protocol), opened once."""
    out = {}
    for name, ckpt, engine in (("tiny", tiny_ckpt, tiny_engine), ("tiny2", tiny2_ckpt, tiny2_engine)):
        for proto in PROTOCOLS:
            out[name, proto] = (open_torch(ckpt, proto, max_new_tokens=8), open_onnx(engine, proto, max_new_tokens=8))
    return out


@pytest.mark.parametrize("size", SIZES, ids=["landscape", "portrait", "wide"])
@pytest.mark.parametrize("crops", CROPS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("ckpt", ["tiny", "tiny2"])
def test_fp32_tokens_equal_reference(sessions, ckpt, protocol, crops, size):
    ref_s, onnx_s = sessions[ckpt, protocol]
    image = make_doc(*size, seed=sum(size))
    ref = ref_s.run(image, "What is the total?", crops=crops)
    got = onnx_s.run(image, "What is the total?", crops=crops)
    assert len(got.turns) == len(ref.turns)
    for rt, gt in zip(ref.turns, got.turns):
        assert gt.generated_ids == rt.generated_ids
        assert (gt.kind, gt.visual_tokens, gt.prefill_tokens) == (rt.kind, rt.visual_tokens, rt.prefill_tokens)
    np.testing.assert_array_equal(got.ids, ref.ids)
    np.testing.assert_array_equal(got.mask, ref.mask)
    assert got.crops == ref.crops and got.rtr == ref.rtr
    if crops != "model":
        assert len(got.turns) == 2  # the crop turn ran on top of the kept cache


def test_batched_vision_mixed_sizes_matches_reference(sessions):
    """One call with views of different grids (a crop turn) equals the reference per view."""
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.views import crop_views, lowres_view

    ref_s, onnx_s = sessions["tiny2", "tool_call"]
    image = make_doc(900, 500, seed=3)
    geo = onnx_s.geometry
    views = [lowres_view(image, geo)] + crop_views(image, AWARES_CROPS, ["0", "5", "all"], geo)
    assert len({v.grid_thw for v in views}) > 2
    ref = ref_s.backend.encode_images(views)
    got = onnx_s.backend.encode_images(views)
    for r, g, v in zip(ref, got, views):
        assert g.shape == (v.n_tokens, onnx_s.backend.hidden_size)
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_kv_cache_is_written_in_place(tiny_engine):
    """The buffers allocated at new_cache() are the ones the decoder writes: same addresses, growing contents."""
    s = open_onnx(tiny_engine)
    be = s.backend
    cache = be.new_cache(64)
    addresses = [b.data_ptr() for b in cache.buffers]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, be.hidden_size)).astype(np.float32)
    be.forward(emb, np.tile(np.arange(5), (3, 1)), cache)
    first = cache.buffers[0].numpy().copy()
    assert np.abs(first[0, :, :5]).min(axis=-1).max() > 0 and not first[0, :, 5:].any()
    be.forward(emb[:1], np.full((3, 1), 5), cache)
    assert [b.data_ptr() for b in cache.buffers] == addresses
    assert cache.length == 6
    after = cache.buffers[0].numpy()
    np.testing.assert_array_equal(after[0, :, :5], first[0, :, :5])
    assert after[0, :, 5].any() and not after[0, :, 6:].any()


def test_rewind_then_continue_equals_fresh(tiny_engine):
    s = open_onnx(tiny_engine)
    be = s.backend
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, be.hidden_size)).astype(np.float32)
    b = rng.standard_normal((3, be.hidden_size)).astype(np.float32)
    pos_a, pos_b = np.tile(np.arange(6), (3, 1)), np.tile(np.arange(6, 9), (3, 1))
    fresh = be.new_cache(32)
    be.forward(a, pos_a, fresh)
    want = be.forward(b, pos_b, fresh)
    cache = be.new_cache(32)
    be.forward(a, pos_a, cache)
    be.forward(rng.standard_normal((4, be.hidden_size)).astype(np.float32), np.tile(np.arange(6, 10), (3, 1)), cache)
    cache.rewind(6)
    np.testing.assert_allclose(be.forward(b, pos_b, cache), want, atol=1e-5)


def test_cache_overflow_is_a_typed_error(tiny_engine):
    from edge_awares.errors import EngineError

    be = open_onnx(tiny_engine).backend
    cache = be.new_cache(4)
    with pytest.raises(EngineError, match="capacity"):
        be.forward(np.zeros((5, be.hidden_size), np.float32), np.zeros((3, 5), np.int64), cache)
