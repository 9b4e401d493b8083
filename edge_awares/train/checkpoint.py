"""Model handling shared by SFT and GRPO: device and precision, loading a Qwen2.5-VL folder, LoRA on the language
model only, the live Session evaluator, and the merged output folder (plain Hugging Face files, no peft needed
to load or export it).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrainError
from ..models import load_pretrained, read_checkpoint

# Files copied from the base folder next to the merged weights (whatever of them exists): the runtime and the
# exporter read tokenizer.json and preprocessor_config.json; transformers reads the rest.
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "added_tokens.json", "preprocessor_config.json", "chat_template.json", "chat_template.jinja")
MODEL_FILE_PATTERNS = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json")


@dataclass(frozen=True)
class Placement:
    """Where and how a run computes: bf16 on a CUDA GPU that supports it, fp32 on CPU (or when asked)."""

    device: str
    dtype: str
    bf16: bool
    use_cpu: bool


def resolve_placement(precision: str) -> Placement:
    import torch

    cuda = torch.cuda.is_available()
    if precision == "bf16" and not (cuda and torch.cuda.is_bf16_supported()):
        raise TrainError("--precision bf16 needs a CUDA GPU with bf16 support; none found (use auto or fp32)")
    bf16 = precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    return Placement(device="cuda" if cuda else "cpu", dtype="bfloat16" if bf16 else "float32", bf16=bf16,
                     use_cpu=not cuda)


def load_model(model_dir: str | Path, placement: Placement):
    """The Qwen2.5-VL model of a checkpoint folder, in the placement's dtype. Raises ModelLoadError."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    info = read_checkpoint(model_dir)
    return load_pretrained(Qwen2_5_VLForConditionalGeneration, info.path, dtype=getattr(torch, placement.dtype))


def checkpointing(args_cls, on: bool) -> dict:
    """The activation-checkpointing argument under the name this transformers uses (`activation_checkpointing`
    replaced `gradient_checkpointing`, which TRL still defaults to True and transformers then warns about)."""
    fields = getattr(args_cls, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def lora_config(rank: int, alpha: int, dropout: float, targets: str):
    """peft LoRA settings; `targets` is a regex peft full-matches against module names (see LANGUAGE_LORA_TARGETS)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")


def lora_targets(model, targets: str) -> list[str]:
    """Module names `targets` selects. Raises TrainError if none match or any lies outside the language model,
    so a careless pattern cannot silently adapt (or miss) the vision tower."""
    pattern = re.compile(targets)
    names = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    if not names:
        raise TrainError(f"--lora-targets {targets!r} matches no module of the model")
    outside = [n for n in names if "language_model" not in n]
    if outside:
        raise TrainError(f"--lora-targets {targets!r} also matches modules outside the language model, e.g. "
                         f"{outside[:3]}; LoRA is for the language model only")
    return names


def hf_model(model):
    """The transformers model inside a peft wrapper (adapters still active), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def make_evaluator(items, protocol, crop_set, geometry, tokenizer, metric_name: str, max_new_tokens: int,
                   max_context: int):
    """`evaluate(model) -> dict`: greedy Session runs of the live (training) model on `items` through the torch
    reference backend; the model's train/eval mode is restored afterwards."""
    from ..data.metrics import get_metric
    from ..runtimes.reference import TorchBackend
    from ..session import Session, SessionConfig
    from .evaluate import evaluate_session

    metric = get_metric(metric_name)

    def evaluate(model) -> dict:
        if not items or model is None:
            return {}
        inner = hf_model(model)
        was_training = inner.training
        device = str(next(inner.parameters()).device)
        try:
            backend = TorchBackend(model=inner, device=device)
            session = Session(backend, tokenizer, protocol, crop_set, geometry,
                              SessionConfig(max_new_tokens=max_new_tokens, max_crop_turns=1, max_context=max_context))
            return evaluate_session(session, items, metric, max_new_tokens)
        finally:
            if was_training:
                model.train()

    return evaluate


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` folder the Trainer wrote, or None."""
    found = sorted((p for p in Path(folder).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def prepare_output(output: str | Path, resume: bool, overwrite: bool, inputs=()) -> Path | None:
    """Check the output folder and mark it as ours; returns the checkpoint to resume from (or None). Raises
    OutputError when it exists and is not a training output or checkpoint of ours, or is (or holds) one of `inputs`
    (edge_awares.outputs); TrainError when a run would clobber a finished model or silently restart one that has
    checkpoints."""
    from ..outputs import ensure_marker, prepare_dir, remove_ours

    out = Path(output)
    # Ours may be resumed or (--overwrite) replaced, decided below; any other non-empty folder is refused.
    prepare_dir(out, "checkpoint", force=True, inputs=inputs)
    ckpts = out / "run" / "checkpoints"
    last = latest_checkpoint(ckpts) if ckpts.is_dir() else None
    if resume:
        if last is None:
            raise TrainError(f"--resume: no checkpoint under {ckpts}")
        return last
    if (out / "config.json").exists() and not overwrite:
        raise TrainError(f"{out} already holds a model; pass --overwrite to replace it or choose another -o")
    if last is not None and not overwrite:
        raise TrainError(f"{out} has checkpoints ({last.name}); pass --resume to continue or --overwrite to restart")
    if overwrite and (out / "run").exists():
        remove_ours(out / "run", "run")
    out.mkdir(parents=True, exist_ok=True)
    ensure_marker(out, "checkpoint")
    return None


def save_merged(model, out_dir: str | Path, base_dir: str | Path) -> Path:
    """Merge LoRA adapters (if any) into the weights and write a plain Hugging Face folder: safetensors, config,
    and the base's tokenizer and preprocessor files. Returns the folder. The old model files are removed first, so
    `out_dir` must be new, empty or a checkpoint of ours, and not the base (OutputError otherwise)."""
    from ..outputs import ensure_marker, prepare_dir

    out = Path(out_dir)
    prepare_dir(out, "checkpoint", force=True, inputs=(base_dir,))
    out.mkdir(parents=True, exist_ok=True)
    ensure_marker(out, "checkpoint")
    for pattern in MODEL_FILE_PATTERNS:
        for old in out.glob(pattern):
            old.unlink()
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out, safe_serialization=True)
    base = Path(base_dir)
    for name in COPIED_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    return out


__all__ = ["Placement", "resolve_placement", "checkpointing", "load_model", "lora_config", "lora_targets", "hf_model",
           "make_evaluator", "latest_checkpoint", "prepare_output", "save_merged"]


@dataclass
class RunStart:
    """What every training run resolves before it touches data: resume point, device, base, policy format."""

    resume_from: Path | None
    placement: Placement
    info: object  # models.CheckpointInfo of the base checkpoint
    protocol: object
    crop_set: object


def start_run(cfg) -> RunStart:
    """Validate `cfg`, prepare its output folder and refuse a base trained for another protocol or crop set."""
    from ..crops import get_crop_set
    from ..protocols import get_protocol
    from .runlog import check_policy

    from . import dist

    cfg.validate()
    placement = resolve_placement(cfg.precision)
    dist.start(placement.use_cpu)
    # Under `accelerate launch` rank 0 checks and prepares the output folder; the others take its answer.
    resume = dist.on_main(lambda: prepare_output(cfg.output, cfg.resume, cfg.overwrite,
                                                 inputs=(cfg.model, cfg.data, cfg.val_data)))
    resume_from = Path(resume) if resume else None
    info = read_checkpoint(cfg.model)
    protocol, crop_set = get_protocol(cfg.protocol), get_crop_set(cfg.crop_set)
    check_policy(cfg.model, protocol, crop_set)
    return RunStart(resume_from, placement, info, protocol, crop_set)


def load_policy_model(cfg, placement: Placement):
    """The seeded base model and, for LoRA runs, its peft config (language-model targets only)."""
    import transformers

    transformers.set_seed(cfg.seed)
    model = load_model(cfg.model, placement)
    if not cfg.lora:
        return model, None
    lora_targets(model, cfg.lora_targets)
    return model, lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)


def finish_run(trainer, cfg, run: RunStart, runlog, stage: str) -> Path:
    """Train (resuming if asked), merge into a plain Hugging Face folder and record the policy it speaks."""
    from .runlog import write_policy

    from . import dist

    trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    model = trainer.model
    if dist.sharded():  # FSDP / ZeRO-3: gather the full weights (a collective: every rank takes part)
        model = _gathered(trainer, cfg)
    if dist.is_main():
        save_merged(model, cfg.output, cfg.model)
        write_policy(cfg.output, run.protocol, run.crop_set, cfg.model, stage)
        runlog.log({"event": "saved", "step": trainer.state.global_step, "output": str(cfg.output),
                    "processes": dist.world_size()})
    dist.barrier()  # no rank reports success before the model is on disk
    return Path(cfg.output)


def _gathered(trainer, cfg):
    """The trained model with its full weights on rank 0, for a sharded run (FSDP or DeepSpeed ZeRO-3): the
    accelerator gathers the state dict (every rank takes part), and rank 0 loads it into a fresh, unsharded copy of
    the policy (with the same LoRA adapters, which save_merged then merges). Other ranks get None.
    Not exercised here: sharding needs GPUs, and CI has none (the DDP path is tested on CPU; see dist.py)."""
    from . import dist

    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not dist.is_main():
        return None
    model, peft_config = load_policy_model(cfg, resolve_placement("fp32"))
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise TrainError(f"the gathered weights do not fit the policy: {len(missing)} missing (e.g. "
                         f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return model
