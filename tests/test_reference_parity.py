"""The cached crop turn gives the same logits as one full forward pass over the whole conversation.

The full pass is transformers' own path (input ids + pixel values; it computes the M-RoPE positions and merges
image features itself), so this checks our prompts' image slots, our positions, the batched crop encoding and
the KV-cache reuse together. fp32, every protocol, several aspect ratios, two checkpoint shapes.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_awares.backend import RecordingBackend  # noqa: E402
from edge_awares.crops import AWARES_CROPS  # noqa: E402
from edge_awares.models import read_checkpoint  # noqa: E402
from edge_awares.protocols import get_protocol  # noqa: E402
from edge_awares.session import Session, SessionConfig  # noqa: E402
from edge_awares.tokenizer import TextTokenizer  # noqa: E402
from edge_awares.runtimes.reference import TorchBackend  # noqa: E402



def _full_forward_logits(model, ids, views, image_token_id):
    pv = torch.from_numpy(np.concatenate([v.pixel_values() for v in views]))
    grid = torch.tensor([v.grid_thw for v in views])
    input_ids = torch.from_numpy(ids)[None]
    with torch.inference_mode():
        out = model(input_ids=input_ids, pixel_values=pv, image_grid_thw=grid,
                    mm_token_type_ids=(input_ids == image_token_id).int(), use_cache=False)
    return out.logits[0].numpy()


@pytest.fixture(scope="module", params=["tiny_ckpt", "tiny2_ckpt"])
def backend(request):
    path = request.getfixturevalue(request.param)
    return path, TorchBackend(path)


@pytest.mark.parametrize("protocol", ["tool_call", "awares", "ergo"])
@pytest.mark.parametrize("crops", ["0,4", "model"])
def test_cached_turns_equal_full_forward(backend, protocol, crops, doc_image_sized):
    path, be = backend
    info = read_checkpoint(path)
    rec = RecordingBackend(be)
    s = Session(rec, TextTokenizer.from_file(path), get_protocol(protocol), AWARES_CROPS, info.geometry,
                SessionConfig(max_new_tokens=6))
    r = s.run(doc_image_sized, "What is the total on the page?", crops=crops)
    if crops == "0,4":
        assert len(r.turns) == 2 and r.turns[1].prefill_tokens < len(r.ids) // 2 + 200
    full = _full_forward_logits(be.model, r.ids[:-1], rec.views, info.config["image_token_id"])
    end = 0
    worst = 0.0
    for embeds, _, logits in rec.calls:
        end += embeds.shape[0]
        ref = full[end - 1]
        worst = max(worst, float(np.abs(logits - ref).max() / (np.abs(ref).max() + 1e-6)))
        assert int(np.argmax(logits)) == int(np.argmax(ref))
    assert end == len(r.ids) - 1
    assert worst < 1e-4, f"relative logit error {worst:.2e}"
    # the greedy tokens the session sampled are the full pass's argmax at every sampled position
    sampled = np.flatnonzero(r.mask)
    assert np.array_equal(np.argmax(full[sampled - 1], axis=-1), r.ids[sampled])
