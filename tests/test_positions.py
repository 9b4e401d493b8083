"""M-RoPE positions in numpy equal transformers' get_rope_index over a whole two-turn conversation, and the
incremental positions of a continuation equal the matching slice of the whole."""

import numpy as np
import pytest

from edge_awares.chat import IM_END, Special, conversation_pieces, encode, generation_prompt, message_pieces
from edge_awares.crops import AWARES_CROPS
from edge_awares.positions import positions_for
from edge_awares.protocols import get_protocol
from edge_awares.tiny import make_tokenizer
from edge_awares.tokenizer import TextTokenizer
from edge_awares.views import Geometry, crop_views

from conftest import make_doc


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer(make_tokenizer())


def _conversation(tok, img, protocol="tool_call"):
    proto = get_protocol(protocol)
    g = proto.geometry(Geometry(max_pixels=256 * 28 * 28))
    first = proto.first_view(img, g)
    crops = crop_views(img, AWARES_CROPS, ["1", "6"], g)
    turn1 = conversation_pieces(proto.system_prompt(AWARES_CROPS), proto.tools(AWARES_CROPS),
                                [proto.user_turn(first, "Which value?")])
    req = proto.request_text(["1", "6"], AWARES_CROPS, first, img)
    turn2 = [req, Special(IM_END), "\n"] + message_pieces(proto.crop_turn(crops, "Which value?"), "assistant") \
        + generation_prompt()
    return turn1, turn2, [first, *crops]


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (1000, 250)])
def test_positions_match_transformers(tok, size):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    img = make_doc(*size)
    turn1, turn2, views = _conversation(tok, img)
    whole = encode(turn1 + turn2, tok)
    ours, _ = positions_for(whole, 0)
    cfg = Qwen2_5_VLConfig(image_token_id=tok.token_id("<|image_pad|>"))
    ids = torch.from_numpy(whole.ids)[None]
    mm = (ids == cfg.image_token_id).int()
    grids = torch.tensor([v.grid_thw for v in views])
    # get_rope_index only reads the config; call it unbound on a stand-in object.
    stub = type("Stub", (), {"config": cfg, "get_vision_position_ids": Qwen2_5_VLModel.get_vision_position_ids})()
    ref, _ = Qwen2_5_VLModel.get_rope_index(stub, ids, mm, image_grid_thw=grids)
    np.testing.assert_array_equal(ours, ref[:, 0].numpy())


def test_continuation_equals_slice(tok):
    img = make_doc(640, 480)
    turn1, turn2, _ = _conversation(tok, img)
    e1, e2 = encode(turn1, tok), encode(turn2, tok)
    p1, nxt = positions_for(e1, 0)
    p2, end = positions_for(e2, nxt)
    whole, whole_end = positions_for(encode(turn1 + turn2, tok), 0)
    assert np.array_equal(np.concatenate([p1, p2], axis=1), whole) and end == whole_end
    # positions advance more slowly than tokens once images are in
    assert end < len(e1) + len(e2)
