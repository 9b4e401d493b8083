"""SFT end to end on tiny checkpoints: the loss falls, the trained model writes the trained request (greedy Session
output parses as a request for the trained crop), the merged output is a plain Hugging Face folder the runtime
loads, LoRA stays on the language model, runs log their config/versions/metrics, and resume continues."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from edge_awares.errors import TrainError
from edge_awares.models import read_checkpoint

from test_train_support import (fixed_request_trajectories, ground_truth_trajectories, hr_policy, one_thread,
                                samples, tiny_base)


def test_sft_lowers_the_loss_and_logs_the_run():
    out = hr_policy()
    run = out / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
    assert any(r.get("request_token_accuracy", 0) > 0.9 for r in records)
    val = [r for r in records if "val/accuracy" in r]
    assert val and {"val/request_rate", "val/rtr", "val/parse_rate", "val/n"} <= set(val[-1])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["kind"] == "sft" and cfg["config"]["request_weight"] == 5.0 and cfg["config"]["seed"] == 0
    assert cfg["resolved"]["placement"]["dtype"] == "float32" and cfg["resolved"]["n_train"] == 3
    versions = json.loads((run / "versions.json").read_text())
    assert versions["trl"] and versions["transformers"] and versions["torch"] and versions["device"] == "cpu"
    policy = json.loads((out / "edge_awares_policy.json").read_text())
    assert policy["protocol"]["name"] == "tool_call" and policy["crop_set"]["name"] == "awares10"


def test_trained_model_reproduces_the_request_format():
    from edge_awares.api import open_session

    session = open_session(model=hr_policy(), protocol="tool_call")
    for s in samples():
        if not s.needs_detail:
            continue
        with one_thread():
            r = session.run(s.load_image(), s.question, max_new_tokens=40)
        assert r.turns[0].parsed == "request" and r.turns[0].crop_ids == ["3"], r.turns[0].text


def test_merged_output_is_a_plain_checkpoint():
    from safetensors import safe_open

    from edge_awares.runtimes.reference import TorchBackend

    out = hr_policy()
    info = read_checkpoint(out)
    assert info.geometry == read_checkpoint(tiny_base()).geometry
    assert (out / "tokenizer.json").read_bytes() == (tiny_base() / "tokenizer.json").read_bytes()
    assert not (out / "adapter_config.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k or "base_layer" in k]
    backend = TorchBackend(out)
    assert backend.vocab_size == TorchBackend(tiny_base()).vocab_size


def test_lora_wraps_the_language_model_only():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edge_awares.train.checkpoint import lora_targets
    from edge_awares.train.config import LANGUAGE_LORA_TARGETS

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_base()))
    names = lora_targets(model, LANGUAGE_LORA_TARGETS)
    assert len(names) == 2 * 7 and all("language_model" in n for n in names)
    # A bare module name also catches the vision tower's MLP: refused.
    assert any("visual" in n for n, _ in model.named_modules() if n.endswith("gate_proj"))
    with pytest.raises(TrainError, match="outside the language model"):
        lora_targets(model, r".*gate_proj")
    with pytest.raises(TrainError, match="matches no module"):
        lora_targets(model, r"nothing")


def test_merge_reproduces_the_adapter_model(tmp_path):
    from peft import get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.train.checkpoint import lora_config, save_merged
    from edge_awares.train.config import LANGUAGE_LORA_TARGETS

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_base()))
    model = get_peft_model(base, lora_config(8, 16, 0.0, LANGUAGE_LORA_TARGETS)).eval()
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)  # LoRA B starts at zero; make the adapter do something
    ids = torch.tensor([[5, 17, 33, 2, 9, 100]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_merged(model, tmp_path, tiny_base())
    backend = TorchBackend(tmp_path)
    with torch.no_grad():
        merged = backend.model(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-5)


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    from edge_awares.train.config import SFTRunConfig
    from edge_awares.train.sft import train_sft

    common = dict(model=str(tiny_base()), data=str(ground_truth_trajectories()), output=str(tmp_path / "o"),
                  val_fraction=0.0, save_strategy="steps", save_steps=2, logging_steps=1, lr=1e-3)
    with one_thread():
        train_sft(SFTRunConfig(max_steps=2, **common), log=lambda *a: None)
        with pytest.raises(TrainError, match="already holds a model"):
            train_sft(SFTRunConfig(max_steps=2, **common), log=lambda *a: None)
        (tmp_path / "o" / "config.json").unlink()  # as if the run had been interrupted before the merge
        with pytest.raises(TrainError, match="pass --resume"):
            train_sft(SFTRunConfig(max_steps=2, **common), log=lambda *a: None)
        train_sft(SFTRunConfig(max_steps=4, resume=True, **common), log=lambda *a: None)
    steps = [json.loads(line).get("step") for line in (tmp_path / "o" / "run" / "metrics.jsonl").read_text().split("\n")
             if line.strip() and "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]  # the resumed run logged steps 3 and 4 only
    assert (tmp_path / "o" / "run" / "checkpoints" / "checkpoint-4").is_dir()
    read_checkpoint(tmp_path / "o")


def test_cli_sft_and_its_errors(tmp_path, capsys):
    from edge_awares.cli import main

    out = tmp_path / "cli"
    with one_thread():
        rc = main(["train", "sft", "--model", str(tiny_base()), "--data", str(fixed_request_trajectories()), "-o",
                   str(out), "--max-steps", "2", "--val-fraction", "0", "--save-strategy", "no", "--full"])
    assert rc == 0 and read_checkpoint(out)
    assert json.loads((out / "run" / "config.json").read_text())["config"]["lora"] is False
    capsys.readouterr()
    # a trajectory for another crop set: one line, non-zero exit, no traceback
    bad = tmp_path / "bad.jsonl"
    line = json.loads(fixed_request_trajectories().read_text().splitlines()[0])
    line["image"] = str(fixed_request_trajectories().parent / line["image"])
    line["crop_ids"] = ["11"]
    line["messages"][1]["request"] = ["11"]
    bad.write_text(json.dumps(line) + "\n")
    rc = main(["train", "sft", "--model", str(tiny_base()), "--data", str(bad), "-o", str(tmp_path / "x"),
               "--image-root", str(fixed_request_trajectories().parent)])
    err = capsys.readouterr().err
    assert rc == 2 and "not in crop set 'awares10'" in err and "Traceback" not in err and len(err.splitlines()) == 1
    rc = main(["train", "sft", "--model", str(tiny_base()), "--data", str(bad)])
    assert rc == 2 and "missing -o" in capsys.readouterr().err.replace("--output", "-o")


def test_sft_output_exports_and_the_engine_keeps_the_request(tmp_path):
    """Train -> export -> torch-free runtime: the ONNX engine built from the SFT output writes the trained request."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    engine_mod = pytest.importorskip("edge_awares.export.engine")
    from edge_awares.api import open_session

    with one_thread():
        engine = engine_mod.export_engine(engine_mod.ExportConfig(checkpoint=str(hr_policy()),
                                                                  output=str(tmp_path / "engine")), log=lambda *a: None)
        s = next(x for x in samples() if x.needs_detail)
        r = open_session(engine=engine, protocol="tool_call").run(s.load_image(), s.question, max_new_tokens=40)
    assert r.turns[0].parsed == "request" and r.crops == ["3"]


def test_trained_checkpoint_carries_its_protocol(tmp_path):
    """read_checkpoint exposes the policy sidecar, so ask/eval/export default to the trained protocol."""
    import json

    from edge_awares.models import POLICY_FILE, read_checkpoint
    from edge_awares.tiny import make_tiny_checkpoint

    ck = make_tiny_checkpoint(tmp_path / "ck")
    assert read_checkpoint(ck).protocol_name("tool_call") == "tool_call"
    (ck / POLICY_FILE).write_text(json.dumps({"protocol": {"name": "awares"}}))
    assert read_checkpoint(ck).protocol_name("tool_call") == "awares"
