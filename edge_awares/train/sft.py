"""Cold-start SFT: TRL's SFTTrainer over whole multi-turn trajectories (low-res view, crop request, crops in the
tool turn, answer), loss on the model's own tokens only, the crop-request turn weighted (×5 by default), LoRA on
the language model, merged at the end into a plain Hugging Face folder.

    edge-awares train sft --model BASE --data trajectories.jsonl -o OUT
    python: train_sft(SFTRunConfig(model="BASE", data="trajectories.jsonl", output="OUT"))
"""

from __future__ import annotations

from pathlib import Path

from ..data.format import Trajectory, read_trajectories
from ..errors import BackendUnavailableError, DataError, TrainError
from .config import SFTRunConfig
from .evaluate import EvalItem

try:
    import torch
except ImportError:  # the CLI turns this into one line naming the extra
    raise BackendUnavailableError("training needs torch, transformers and TRL: pip install 'edge-awares[train]'")


def weighted_nll(log_probs: "torch.Tensor", weights: "torch.Tensor", num_items=None) -> "torch.Tensor":
    """Σ_t w_t · (−log p(token_t+1)) / N.

    `log_probs` [B, L-1]: log-probability of each next token (0 where not trained), as TRL's fused LM head returns.
    `weights` [B, L]: per input token, aligned with input_ids (0 where not trained). N is `num_items` when given
    (trained tokens over an accumulated batch), else the number of trained tokens here. All weights 1 gives TRL's
    own SFT loss; a request weight of 5 makes each request token count five times.
    """
    w = weights[:, 1:].to(log_probs.dtype)
    n = (w > 0).sum() if num_items is None else num_items
    return -(log_probs * w).sum() / torch.as_tensor(n, device=log_probs.device).clamp(min=1)


def sft_trainer_class():
    """TRL's SFTTrainer with a per-token weighted loss.

    TRL weighs every trained token alike and offers no per-turn weight; AwaRes weighs the crop-request turn ×5 so
    the rare, format-critical request tokens are learned (the paper's 100% request parse rate after SFT). The
    collator emits `loss_weights` from the same rendering that builds the mask; this override is the only change
    to TRL's loss (same fused LM head, same normalisation by trained tokens).
    """
    from trl import SFTTrainer

    class WeightedSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Qwen2.5-VL declares no loss kwargs, so the Trainer would leave num_items_in_batch unset and each
            # micro-batch (and each DDP rank) would be normalised by its own token count: one batch of 6 would not
            # equal 3 x grad-accum 2 or 2 processes x 3 (measured: 2% apart). compute_loss below divides by
            # num_items_in_batch itself, so the Trainer may count the trained tokens over the accumulated batch and
            # across ranks, and it then leaves the loss unscaled by the accumulation steps.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("loss_weights", None)
            if weights is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            loss = weighted_nll(outputs.log_probs, weights.to(outputs.log_probs.device), num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            valid = outputs.label_mask.sum()
            if valid > 0 and outputs.is_top1 is not None:
                self._metrics[mode]["mean_token_accuracy"].append((outputs.is_top1.sum() / valid).item())
                heavy = (weights[:, 1:] > 1).to(outputs.is_top1.device)
                if heavy.any():  # tokens of the request turn (weight > 1): the format that must be exact
                    self._metrics[mode]["request_token_accuracy"].append(
                        ((outputs.is_top1 * heavy).sum() / heavy.sum()).item())
            return (loss, outputs) if return_outputs else loss

    return WeightedSFTTrainer


def data_file(path: str | Path, name: str) -> Path:
    """`path` itself, or `path/name` when `path` is a folder. Raises DataError if neither is a file."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return p


def split_items(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split by id (the same ids for the same seed, whatever the file order)."""
    import hashlib

    if fraction <= 0 or len(items) < 2:
        return list(items), []
    key = lambda it: hashlib.sha256(f"{seed}:{it.id}".encode()).hexdigest()  # noqa: E731
    ranked = sorted(items, key=key)
    k = max(1, round(len(items) * fraction))
    held = {it.id for it in ranked[:k]}
    return [it for it in items if it.id not in held], [it for it in items if it.id in held]


def check_trajectories(trajs: list[Trajectory], protocol, crop_set) -> None:
    """Raise TrainError for trajectories that state another protocol or crop set in their meta (curation records
    them) than the run uses."""
    for t in trajs:
        meta = t.meta or {}
        want = meta.get("protocol")
        if isinstance(want, dict):
            want = want.get("name")
        if want is not None and want != protocol.name:
            raise TrainError(f"trajectory {t.id!r} was made for protocol {want!r}, but this run trains "
                             f"{protocol.name!r}; pass --protocol {want} or re-curate")
        cs = meta.get("crop_set")
        if isinstance(cs, dict):
            cs = cs.get("name")
        if cs is not None and cs != crop_set.name:
            raise TrainError(f"trajectory {t.id!r} was made for crop set {cs!r}, but this run uses {crop_set.name!r}")


def eval_items(trajs) -> list[EvalItem]:
    return [EvalItem(t.id, str(t.image), t.question, tuple(t.answers), t.label == "HR") for t in trajs]


def build_dataset(trajs: list[Trajectory], renderer):
    """The SFT dataset in TRL's conversational-vision format (messages, images, tools) plus loss weights."""
    from datasets import Dataset

    rows = [renderer.row(t) for t in trajs]
    if not rows:
        raise DataError("no training trajectories")
    return Dataset.from_list(rows)


def train_sft(cfg: SFTRunConfig, log=print, callbacks: list | None = None) -> Path:
    """Run SFT and write the merged checkpoint to `cfg.output` (logs and checkpoints in `cfg.output/run`).

    Raises ConfigError, DataError, ModelLoadError or TrainError (all one-line CLI errors).
    """
    from trl import SFTConfig

    from ..tokenizer import TextTokenizer
    from .checkpoint import checkpointing, finish_run, load_policy_model, make_evaluator, start_run
    from .collate import make_collator
    from .render import TrajectoryRenderer, make_processor
    from .runlog import RunLog, make_callbacks

    run = start_run(cfg)
    placement, info, protocol, crop_set, resume_from = run.placement, run.info, run.protocol, run.crop_set, \
        run.resume_from
    trajs = read_trajectories(data_file(cfg.data, "trajectories.jsonl"), image_roots=cfg.image_roots)
    check_trajectories(trajs, protocol, crop_set)
    if cfg.val_data:
        train, val = trajs, read_trajectories(data_file(cfg.val_data, "trajectories.jsonl"),
                                              image_roots=cfg.image_roots)
    else:
        train, val = split_items(trajs, cfg.val_fraction, cfg.seed)
    renderer = TrajectoryRenderer(protocol, crop_set, info.geometry, cfg.request_weight,
                                  control_texts=tuple(TextTokenizer.from_file(info.path).added_tokens()))
    dataset = build_dataset(train, renderer)  # renders every trajectory: misfits fail here, before the model loads
    processor = make_processor(info.path, renderer.geometry)
    collator = make_collator(processor, renderer, cfg.max_length)

    model, peft_config = load_policy_model(cfg, placement)

    args = SFTConfig(
        output_dir=str(cfg.run_dir / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy=cfg.save_strategy, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        bf16=placement.bf16, use_cpu=placement.use_cpu, **checkpointing(SFTConfig, cfg.gradient_checkpointing),
        # Our collator renders and tokenizes; these keep TRL from preparing, truncating or dropping columns.
        assistant_only_loss=True, remove_unused_columns=False, max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True}, report_to="none", eval_strategy="no",
        dataloader_num_workers=0, disable_tqdm=False,
    )
    runlog = RunLog(cfg.run_dir)
    runlog.write_config(cfg, {"placement": placement.__dict__, "n_train": len(train), "n_val": len(val),
                              "geometry": renderer.geometry.to_dict(), "protocol": protocol.to_dict(),
                              "chat_template": "trl qwen3_vl (training variant for the assistant mask)",
                              "resume_from": str(resume_from) if resume_from else None,
                              "trl_args": args.to_dict()})
    runlog.write_versions()
    evaluator = make_evaluator(eval_items(val[: cfg.val_samples]), protocol, crop_set, info.geometry,
                               TextTokenizer.from_file(info.path), cfg.eval_metric, cfg.turn_tokens,
                               cfg.max_context)
    trainer = sft_trainer_class()(
        model=model, args=args, data_collator=collator, train_dataset=dataset, processing_class=processor,
        peft_config=peft_config, callbacks=make_callbacks(runlog, evaluator, cfg.eval_steps) + list(callbacks or []))
    log(f"SFT: {len(train)} trajectories ({sum(t.label == 'HR' for t in train)} HR), {len(val)} held out; "
        f"{'LoRA r=%d' % cfg.lora_rank if cfg.lora else 'full fine-tuning'}; {placement.device} {placement.dtype}")
    return finish_run(trainer, cfg, run, runlog, "sft")


__all__ = ["train_sft", "weighted_nll", "sft_trainer_class", "build_dataset", "split_items", "data_file"]
