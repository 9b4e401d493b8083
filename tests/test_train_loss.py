"""The SFT loss: masked to the model's own tokens, the request turn weighted, checked against hand computations
(a toy tensor batch, and a real collated batch against full-logit cross-entropy)."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.format import read_trajectories
from edge_awares.models import read_checkpoint
from edge_awares.protocols import get_protocol
from edge_awares.train.collate import make_collator
from edge_awares.train.render import TrajectoryRenderer, make_processor
from edge_awares.train.sft import weighted_nll

from test_train_support import ground_truth_trajectories, one_thread, tiny_base


def test_weighted_nll_toy_batch():
    # two rows of five tokens; log_probs[:, t] scores token t+1; weights align with input tokens
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.8, 1.0], [0.1, 0.2, 0.4, 0.9]]))
    w = torch.tensor([[0, 0, 5, 5, 0], [0, 1, 1, 0, 1.0]])
    lp = lp * (w[:, 1:] > 0)  # the fused head returns 0 where the label is -100
    expected = (5 * -math.log(0.25) + 5 * -math.log(0.8) + -math.log(0.1) + -math.log(0.2) + -math.log(0.9)) / 5
    assert weighted_nll(lp, w).item() == pytest.approx(expected, rel=1e-6)
    assert weighted_nll(lp, w, num_items=10).item() == pytest.approx(expected * 5 / 10, rel=1e-6)


def test_weighted_loss_on_a_real_batch_matches_cross_entropy():
    from trl.trainer.utils import add_fused_lm_head
    from transformers import Qwen2_5_VLForConditionalGeneration

    info = read_checkpoint(tiny_base())
    renderer = TrajectoryRenderer(get_protocol("tool_call"), AWARES_CROPS, info.geometry, request_weight=5.0)
    collator = make_collator(make_processor(info.path, renderer.geometry), renderer)
    trajs = read_trajectories(ground_truth_trajectories())
    hr = next(t for t in trajs if t.label == "HR")
    lr = next(t for t in trajs if t.label == "LR")
    batch = collator([renderer.row(hr), renderer.row(lr)])  # padded batch of two
    weights = batch.pop("loss_weights")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(info.path)).eval()
    with one_thread(), torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        add_fused_lm_head(model, outputs=("log_probs", "is_top1"))
        fused = model(**batch, fused_lm_head=True)
    # by hand: cross-entropy of every next token, times its weight, over the number of trained tokens
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
    w = weights[:, 1:]
    by_hand = (nll * w).sum() / (labels != -100).sum()
    assert weighted_nll(fused.log_probs, weights).item() == pytest.approx(by_hand.item(), rel=1e-4)
    # weights 1 everywhere it trains: exactly TRL's own SFT loss
    ones = (weights > 0).float()
    assert weighted_nll(fused.log_probs, ones).item() == pytest.approx(fused.loss.item(), rel=1e-5)
    # the request turn counts five times: 5 on its tokens, 1 on the answers', 0 elsewhere
    assert set(w[labels != -100].unique().tolist()) == {1.0, 5.0} and (w[labels == -100] == 0).all()
