"""GRPO on TRL with crop rollouts: one update moves the policy away from requests when not requesting is rewarded,
crop images reach the training forward pass, the completion budget is guarded, and the paper's settings (not
TRL's defaults) are the ones used."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from edge_awares.errors import TrainError
from edge_awares.train.config import GRPORunConfig

from test_train_support import fixed_request_trajectories, hr_policy, mixed_policy, one_thread, samples, samples_file


def request_prob(model_dir, sample) -> float:
    """P(first token = <tool_call>) at the session's first-turn prompt, from the reference backend's logits."""
    from edge_awares.api import open_session
    from edge_awares.chat import conversation_pieces, encode
    from edge_awares.positions import positions_for

    s = open_session(model=model_dir, protocol="tool_call")
    p, cs = s.protocol, s.crop_set
    first = p.first_view(sample.load_image(), s.geometry)
    enc = encode(conversation_pieces(p.system_prompt(cs), p.tools(cs), [p.user_turn(first, sample.question)]), s.tok)
    emb = s.backend.embed_tokens(enc.ids)
    for (off, v), f in zip(enc.images, s.backend.encode_images([v for _, v in enc.images])):
        emb[off:off + v.n_tokens] = f
    with one_thread():
        logits = s.backend.forward_all(emb, positions_for(enc, 0)[0], None, last_only=True)[-1].astype(np.float64)
    z = np.exp(logits - logits.max())
    return float(z[s.tok.token_id("<tool_call>")] / z.sum())


@pytest.fixture
def capture_forward(monkeypatch):
    """Record the inputs of every log-prob forward pass GRPO makes (old/ref/policy)."""
    from trl import GRPOTrainer

    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def spy(self, model, input_ids, attention_mask, logits_to_keep, **kw):
        calls.append({"input_ids": input_ids.clone(), **{k: v for k, v in kw.items() if v is not None}})
        return original(self, model, input_ids, attention_mask, logits_to_keep, **kw)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", spy)
    return calls


def _records(out):
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


def test_one_update_moves_the_policy_away_from_penalised_requests(tmp_path):
    """Toy: answers unreachable (R_ans = 0), the sample labelled LR, requests cost 1: only not requesting pays."""
    from edge_awares.data.format import write_samples

    model = mixed_policy()
    sample = max(samples()[:3], key=lambda s: request_prob(model, s))  # the page it is least sure to answer
    before = request_prob(model, sample)
    sample.needs_detail, sample.answers = False, ["<unreachable>"]
    data = write_samples(tmp_path / "one" / "samples.jsonl", [sample], image_dir=None)
    cfg = GRPORunConfig(model=str(model), data=str(data), output=str(tmp_path / "g"), lr=2e-2, max_steps=1,
                        image_roots=(str(samples_file().parent),),
                        num_generations=8, val_fraction=0.0, save_strategy="no", answer_metric="exact",
                        alpha_use=1.0, seed=0)
    with one_thread():
        from edge_awares.train.grpo import train_grpo

        out = train_grpo(cfg, log=lambda *a: None)
    step = _records(out)[0]
    assert 0 < step["rollout/request_rate"] < 1 and step["reward_std"] > 0  # a group with something to learn
    assert step["rewards/answer/mean"] == 0.0
    after = request_prob(out, sample)
    assert before > 0.05 and after < 0.8 * before, (before, after)


def test_crop_images_reach_the_training_forward_pass(tmp_path, capture_forward):
    from edge_awares.train.grpo import train_grpo

    cfg = GRPORunConfig(model=str(hr_policy()), data=str(fixed_request_trajectories()), output=str(tmp_path / "g"),
                        max_steps=1, num_generations=2, val_fraction=0.0, save_strategy="no", answer_metric="exact",
                        temperature=0.5, seed=0)
    with one_thread():
        out = train_grpo(cfg, log=lambda *a: None)
    step = _records(out)[0]
    assert step["tools/call_frequency"] > 0 and step["rollout/rtr"] > 0.25
    assert capture_forward, "GRPO made no log-prob forward pass"
    for call in capture_forward:
        grid = call["image_grid_thw"]
        assert sum(call["num_images"]) == grid.shape[0] > len(call["num_images"])  # low-res views + crops
        assert call["pixel_values"].shape[0] == int(grid.prod(-1).sum())
        assert int((call["mm_token_type_ids"] == 1).sum()) == int(grid.prod(-1).sum()) // 4


def test_completion_budget_guard(tmp_path):
    from edge_awares.train.grpo import train_grpo

    cfg = GRPORunConfig(model=str(hr_policy()), data=str(fixed_request_trajectories()), output=str(tmp_path / "g"),
                        max_completion_length=64, val_fraction=0.0)
    with pytest.raises(TrainError, match="silently"):
        train_grpo(cfg, log=lambda *a: None)


# TRL's own default GRPOConfig (built here for comparison) sets gradient_checkpointing=True, the name transformers
# deprecates; our own config passes activation_checkpointing (tests/test_deprecations.py).
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_grpo_settings_are_the_papers_not_trls_defaults(tmp_path):
    from trl import GRPOConfig

    from edge_awares.train.checkpoint import Placement
    from edge_awares.train.grpo import grpo_args

    trl_defaults = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (trl_defaults.loss_type, trl_defaults.beta) == ("dapo", 0.0)
    cfg = GRPORunConfig(model=str(hr_policy()), data=str(fixed_request_trajectories()), output=str(tmp_path / "g"))
    args = grpo_args(cfg.validate(), Placement("cpu", "float32", False, True), 512)
    assert (args.loss_type, args.beta, args.num_generations, args.temperature) == ("grpo", 0.05, 8, 1.0)
    assert args.max_tool_calling_iterations == 1 and args.per_device_train_batch_size == 8
    assert args.max_completion_length == 512 and not args.use_vllm
    from edge_awares.session import SessionConfig

    # each turn gets the runtime's per-turn budget (TRL's default: the whole max_completion_length per turn)
    assert args.generation_kwargs == {"max_new_tokens": SessionConfig().max_new_tokens}


def test_shipped_recipes_are_valid_configs():
    from pathlib import Path

    from edge_awares.train.config import SFTRunConfig, load_recipe

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        values = load_recipe(path)
        cls = GRPORunConfig if values.get("kind") == "grpo" else SFTRunConfig
        cfg = cls.from_dict({**values, "model": "m", "data": "d", "output": "o"})
        assert cfg.precision == "bf16" and cfg.lora and cfg.gradient_checkpointing, path.name


def test_cli_recipe_then_flags(tmp_path, capsys):
    """A GPU recipe with command-line overrides: fp32 replaces the recipe's bf16 (no GPU here) and the flag's
    completion budget is the one checked; the budget error comes out as one line."""
    from pathlib import Path

    from edge_awares.cli import main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-vl-3b-grpo.yaml"
    rc = main(["train", "grpo", "--config", str(recipe), "--model", str(hr_policy()), "--data",
               str(fixed_request_trajectories()), "-o", str(tmp_path / "g"), "--precision", "fp32",
               "--max-completion-length", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_completion_length=64" in err and len(err.strip().splitlines()) == 1
    rc = main(["train", "grpo", "--model", str(hr_policy()), "--data", str(fixed_request_trajectories()), "-o",
               str(tmp_path / "g"), "--protocol", "awares"])
    assert rc == 2 and "parses only the tool_call protocol" in capsys.readouterr().err


def test_cli_oracle_trajectories(tmp_path):
    from edge_awares.cli import main
    from edge_awares.data.format import read_trajectories

    from test_train_support import samples_file

    out = tmp_path / "t.jsonl"
    assert main(["train", "oracle", str(samples_file()), "-o", str(out)]) == 0
    trajs = {t.id: t for t in read_trajectories(out, image_roots=[samples_file().parent])}
    for s in samples():
        assert trajs[s.id].label == ("HR" if s.needs_detail else "LR")
        assert trajs[s.id].crop_ids == (s.crop_ids if s.needs_detail else [])


@pytest.mark.parametrize("arch,billions", [("qwen2.5-vl-3b", 3.75), ("qwen2.5-vl-7b", 8.29)])
def test_steptime_architectures_have_the_published_size(arch, billions):
    """The random-init 3B/7B models the step-time tool builds for GPU timing have the real parameter counts."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edge_awares.train.steptime import arch_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(arch_config(arch)[0])
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.02)


def test_vllm_mode_is_refused_where_it_cannot_run(tmp_path):
    """TRL's vLLM rollouts need a CUDA GPU and vllm; without them the run stops before loading anything."""
    import torch

    from edge_awares.errors import ConfigError
    from edge_awares.train.grpo import grpo_args, vllm_args
    from edge_awares.train.checkpoint import Placement

    model, data = str(hr_policy()), str(fixed_request_trajectories())
    cfg = GRPORunConfig(model=model, data=data, output=str(tmp_path / "g"), vllm="colocate").validate()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal is for machines without one")
    with pytest.raises(ConfigError, match="CUDA GPU"):
        vllm_args(cfg)
    with pytest.raises(ConfigError, match="vllm mode"):
        GRPORunConfig(model=model, data=data, output=str(tmp_path / "o"), vllm="fast").validate()
    off = grpo_args(GRPORunConfig(model=model, data=data, output=str(tmp_path / "o")).validate(),
                    Placement("cpu", "float32", False, True), 512)
    assert not off.use_vllm
