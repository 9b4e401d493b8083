"""benchmarks/gpu_check.py in --tiny mode on the CPU: every section runs, the JSON holds the loop / native / re-prefill
timings, the kept-cache crop turn prefills fewer tokens than re-prefilling the conversation and ends on the same
logits, and the assistant-mask fallback for transformers < 5.18 equals the mask of newer transformers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    # One thread: two on a shared 2-core box train about 10x slower (test_train_support.one_thread).
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--runs", "1", "--threads", "1",
                           "--out", str(out)], check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), proc.stdout


def test_tiny_run_records_every_path(tiny_result):
    result, md, stdout = tiny_result
    r = result["sizes"]["tiny"]
    assert r["errors"] == {}
    for path in ("awares_loop", "native", "lowres_only"):
        turns = r[path]["turns"]
        assert r[path]["sample_ms"] > 0 and len(r[path]["runs_sample_ms"]) == 1
        for t in turns:
            assert {"vision_ms", "prefill_ms", "decode_ms", "prefill_tokens", "visual_tokens"} <= set(t)
    loop, native, re = r["awares_loop"], r["native"], r["reprefill"]
    assert [t["kind"] for t in loop["turns"]] == ["prompt", "crop"] and loop["crops"] == ["0", "4"]
    assert len(native["turns"]) == 1 and native["turns"][0]["visual_tokens"] == loop["native_visual_tokens"]
    assert loop["turns"][1]["generated"] == re["turn2"]["generated"] >= 1
    assert re["turn2"]["prefill_ms"] > 0 and re["turn2"]["vision_ms"] > 0 and re["sample_ms"] > 0
    # The point of the kept cache: the crop turn prefills only its own tokens, the re-prefill the whole conversation.
    kept, full = loop["turns"][1]["prefill_tokens"], re["turn2"]["prefill_tokens"]
    assert kept < full and full == loop["turns"][0]["prefill_tokens"] + kept
    assert re["turn2"]["visual_tokens"] == loop["visual_tokens"] > loop["turns"][1]["visual_tokens"]
    # ... and ends on the same next-token logits (fp32 on CPU).
    assert re["same_argmax"] and re["logit_max_abs_diff"] <= 1e-4 * max(1.0, re["logit_scale"])
    assert 0 < loop["rtr"] < 1
    assert "| path | turn |" in md and "re-prefill" in md and "| path | turn |" in stdout
    assert result["preflight"]["versions"]["torch"] and "missing_for" in result["preflight"]


def test_tiny_run_trains_one_step_each(tiny_result):
    result, md, _ = tiny_result
    train = result["train"]
    if result["preflight"]["missing_for"]["train"]:
        assert "missing packages" in train["error"]
        pytest.skip(f"training packages missing: {result['preflight']['missing_for']['train']}")
    for name in ("sft", "grpo"):
        assert "error" not in train[name], train[name].get("traceback")
        assert train[name]["step_s"] > 0 and train[name]["settings"]["lora"] is True
    assert "| sft | ok" in md and "| grpo | ok" in md


def test_scanned_assistant_mask_equals_transformers_mask(tmp_path):
    """The fallback used on transformers < 5.18 gives the collator the same labels and weights as the processor's
    own assistant mask does where that mask is right (transformers >= 5.18)."""
    pytest.importorskip("trl")
    gc = _load_script()
    if gc._old_transformers():
        pytest.skip("needs transformers >= 5.18 for the reference mask")
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.data.format import Trajectory, read_samples
    from edge_awares.data.synth import write_dataset
    from edge_awares.models import read_checkpoint
    from edge_awares.protocols import get_protocol
    from edge_awares.tiny import make_tiny_checkpoint
    from edge_awares.train.collate import make_collator
    from edge_awares.train.render import TrajectoryRenderer, make_processor

    ckpt = make_tiny_checkpoint(tmp_path / "tiny", preset="tiny")
    samples = read_samples(write_dataset(tmp_path / "data", n=4, seed=0))
    trajs = [Trajectory.from_sample(s, s.crop_ids if s.needs_detail else []) for s in samples]
    trajs.append(Trajectory.from_sample(samples[0], ["0", "4"]))  # two crops in one tool turn
    renderer = TrajectoryRenderer(get_protocol("tool_call"), AWARES_CROPS, read_checkpoint(ckpt).geometry, 5.0)
    rows = [renderer.row(t) for t in trajs]
    assert any(t.label == "HR" for t in trajs) and any(t.label == "LR" for t in trajs)
    batches = []
    for wrap in (False, True):
        processor = make_processor(ckpt, renderer.geometry)
        if wrap:
            processor = gc.with_scanned_assistant_mask(processor)
        batches.append(make_collator(processor, renderer)(rows))
    ref, scanned = batches
    assert torch.equal(ref["input_ids"], scanned["input_ids"])
    assert torch.equal(ref["labels"], scanned["labels"]) and (ref["labels"] != -100).any()
    assert torch.equal(ref["loss_weights"], scanned["loss_weights"])
