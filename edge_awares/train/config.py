"""Run configurations for `train sft` and `train grpo`: frozen dataclasses, validated before any heavy work,
saved as JSON next to the run's outputs (STYLE.md §5). Recipes (configs/*.yaml) hold the same keys.

Every paper constant is a field here, not code: request weight 5, LoRA rank 8, lr 1e-4, 2 epochs (SFT);
G = 8, beta = 0.05, temperature 1.0, alpha_miss 2, alpha_use 0.25, lambda 0.01 (GRPO).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..crops import AWARES_CROPS, get_crop_set
from ..errors import ConfigError, CropError
from ..protocols import DEFAULT_PROTOCOL, PROTOCOLS
from ..ranges import BATCH, BELOW_ONE, COUNT, LEARNING_RATE, SEED, STEPS, Range, check_ranges

# The language model's attention and MLP projections only. peft has no Qwen2.5-VL defaults, and a bare name such
# as `gate_proj` also matches the vision tower's MLP (model.visual.blocks.N.mlp.gate_proj): a regex, which peft
# full-matches against module names, pins the adapters to the language model.
LANGUAGE_LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PRECISIONS = ("auto", "bf16", "fp32")
EVAL_METRICS = ("anls", "exact", "relaxed", "embedding")
AREA_UNITS = ("percent", "fraction")
GRPO_LOSSES = ("grpo", "dapo", "dr_grpo", "bnpo")


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by SFT and GRPO runs."""

    kind = "run"
    model: str  # Hugging Face Qwen2.5-VL folder (base for SFT, the SFT output for GRPO)
    data: str  # JSONL (trajectories for SFT; samples or trajectories for GRPO) or a folder holding one
    output: str  # the merged checkpoint folder; logs and checkpoints go to OUTPUT/run/
    protocol: str = DEFAULT_PROTOCOL
    crop_set: str = AWARES_CROPS.name
    val_data: str | None = None  # held-out JSONL; else `val_fraction` of `data` is held out
    # Folders the data's images may lie in besides the data file's own (curation output points at the curated
    # data's images): every image path must resolve inside one of them (edge_awares.data.loaders.confine_image).
    image_roots: tuple[str, ...] = ()
    val_fraction: float = 0.1
    val_samples: int = 32  # at most this many validation samples per evaluation (through Session, greedy)
    eval_metric: str = "anls"
    eval_steps: int = 0  # evaluate every N optimizer steps (0: at the end only)
    # Tokens one turn may generate, in GRPO rollouts and validation sessions alike (None: the runtime's own
    # default, SessionConfig.max_new_tokens, which an exported engine also records), so training sees the budget
    # the policy later runs under.
    max_new_tokens: int | None = None
    lora: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = LANGUAGE_LORA_TARGETS
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on a CUDA GPU that supports it, fp32 on CPU
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_strategy: str = "epoch"  # resumable checkpoints: every epoch, every `save_steps` steps, or "no"
    save_steps: int = 500
    save_total_limit: int = 2
    resume: bool = False  # continue from the newest checkpoint under OUTPUT/run/checkpoints
    overwrite: bool = False  # replace an existing OUTPUT (without --resume)
    max_context: int = 8192  # KV capacity of validation sessions

    RANGES = {
        "val_fraction": BELOW_ONE, "val_samples": COUNT, "eval_steps": COUNT,
        "max_new_tokens": Range(1, 1 << 16, integer=True, optional=True), "lora_rank": Range(1, 4096, integer=True),
        "lora_alpha": Range(1, 1 << 16, integer=True), "lora_dropout": BELOW_ONE,
        "epochs": Range(0.0, 1e4, lo_open=True), "max_steps": Range(1, 10**9, integer=True, also=(-1,)),
        "lr": LEARNING_RATE, "batch_size": BATCH, "grad_accum": BATCH, "warmup_ratio": BELOW_ONE,
        "weight_decay": Range(0.0, 10.0), "seed": SEED, "logging_steps": STEPS, "save_steps": STEPS,
        "save_total_limit": Range(1, 10**4, integer=True), "max_context": Range(256, 1 << 20, integer=True),
    }

    def validate(self):
        """Return self, or raise ConfigError naming the bad value and the legal ones (numbers first, then paths)."""
        check_ranges(self, self.RANGES)
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; legal: {', '.join(PROTOCOLS)}")
        try:
            get_crop_set(self.crop_set)
        except CropError as e:
            raise ConfigError(str(e)) from None
        for name in ("model", "data"):
            if not Path(getattr(self, name)).exists():
                raise ConfigError(f"--{name} {getattr(self, name)} does not exist")
        if self.val_data is not None and not Path(self.val_data).exists():
            raise ConfigError(f"--val-data {self.val_data} does not exist")
        if isinstance(self.image_roots, (str, Path)):
            raise ConfigError(f"image_roots must be a list of folders, got the single value {self.image_roots!r}")
        from ..data.loaders import check_image_roots

        check_image_roots(self.image_roots)
        if self.save_strategy not in ("epoch", "steps", "no"):
            raise ConfigError(f"unknown save_strategy {self.save_strategy!r}; legal: epoch, steps, no")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; legal: {', '.join(PRECISIONS)}")
        if self.eval_metric not in EVAL_METRICS:
            raise ConfigError(f"unknown eval metric {self.eval_metric!r}; legal: {', '.join(EVAL_METRICS)}")
        if self.lora:
            import re

            try:
                re.compile(self.lora_targets)
            except re.error as e:
                raise ConfigError(f"--lora-targets is not a valid regex ({e})") from None
        return self

    @property
    def turn_tokens(self) -> int:
        """The per-turn generation budget: `max_new_tokens`, else the runtime's default."""
        from ..session import SessionConfig

        return self.max_new_tokens if self.max_new_tokens is not None else SessionConfig().max_new_tokens

    @property
    def run_dir(self) -> Path:
        return Path(self.output) / "run"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict (a recipe or a saved config); unknown keys raise ConfigError listing the legal ones."""
        d = {k.replace("-", "_"): v for k, v in d.items() if k != "kind"}
        legal = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - legal)
        if unknown:
            raise ConfigError(f"unknown {cls.kind} settings {unknown}; legal: {', '.join(sorted(legal))}")
        return cls(**d)


@dataclass(frozen=True)
class SFTRunConfig(RunConfig):
    """Cold-start SFT on whole trajectories (DESIGN.md §1 Training b)."""

    kind = "sft"
    request_weight: float = 5.0  # loss weight of the crop-request turn's tokens (answers: 1)
    max_length: int | None = None  # tokens per conversation; longer ones raise (None: no limit)

    RANGES = {**RunConfig.RANGES, "request_weight": Range(0.0, 1000.0, lo_open=True),
              "max_length": Range(64, 1 << 20, integer=True, optional=True)}


VLLM_MODES = ("off", "colocate", "server")


@dataclass(frozen=True)
class GRPORunConfig(RunConfig):
    """Multi-turn GRPO over crop rollouts (DESIGN.md §1 Training c). TRL's own defaults differ (loss 'dapo',
    beta 0, lr 1e-6); these are the paper's, set explicitly. The per-device batch is G * prompts_per_step
    completions (`batch_size` is not used)."""

    kind = "grpo"
    lr: float = 1e-5
    epochs: float = 1.0
    num_generations: int = 8  # G
    prompts_per_step: int = 1  # prompts per device step; TRL's per-device batch = G * prompts_per_step
    beta: float = 0.05
    temperature: float = 1.0
    top_p: float = 1.0
    epsilon: float = 0.2
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    max_completion_length: int | None = None  # None: the largest data budget (turns of max_new_tokens + whole image)
    max_crop_turns: int = 1  # TRL's max_tool_calling_iterations
    answer_metric: str = "embedding"  # R_ans: embedding (cosine), anls, exact or relaxed
    alpha_miss: float = 2.0  # C_tool for an HR sample answered without a request
    alpha_use: float = 0.25  # C_tool for any request ...
    area_lambda: float = 0.01  # ... plus lambda * requested area
    area_unit: str = "percent"  # requested area: percent (0-100) or fraction (0-1) of the image, summed over crops
    # Rollout generation: "off" (transformers' generate, in the trainer's process) or TRL's vLLM modes, "colocate"
    # (vLLM in each training process) or "server" (a `trl vllm-serve` process). GPU only; see grpo.py.
    vllm: str = "off"

    RANGES = {
        **RunConfig.RANGES, "num_generations": Range(2, 1024, integer=True), "prompts_per_step": BATCH,
        "beta": Range(0.0, 100.0), "temperature": Range(0.0, 100.0, lo_open=True), "top_p": Range(0.0, 1.0, lo_open=True),
        "epsilon": Range(0.0, 10.0, lo_open=True),
        "max_crop_turns": Range(1, 16, integer=True), "alpha_miss": Range(0.0, 1000.0),
        "alpha_use": Range(0.0, 1000.0), "area_lambda": Range(0.0, 1000.0),
        "max_completion_length": Range(16, 1 << 20, integer=True, optional=True),
    }

    def validate(self):
        super().validate()
        if self.protocol != "tool_call":
            raise ConfigError(f"GRPO runs through TRL's tool-calling loop, which parses only the tool_call protocol "
                              f"(<tool_call>{{json}}</tool_call>); got --protocol {self.protocol}")
        if self.loss_type not in GRPO_LOSSES:
            raise ConfigError(f"unknown loss_type {self.loss_type!r}; legal: {', '.join(GRPO_LOSSES)}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"unknown scale_rewards {self.scale_rewards!r}; legal: group, batch, none")
        if self.answer_metric not in EVAL_METRICS:
            raise ConfigError(f"unknown answer metric {self.answer_metric!r}; legal: {', '.join(EVAL_METRICS)}")
        if self.area_unit not in AREA_UNITS:
            raise ConfigError(f"unknown area unit {self.area_unit!r}; legal: {', '.join(AREA_UNITS)}")
        if self.vllm not in VLLM_MODES:
            raise ConfigError(f"unknown vllm mode {self.vllm!r}; legal: {', '.join(VLLM_MODES)}")
        return self

    def reward_config(self):
        from .rewards import RewardConfig

        return RewardConfig(answer_metric=self.answer_metric, alpha_miss=self.alpha_miss, alpha_use=self.alpha_use,
                            area_lambda=self.area_lambda, area_unit=self.area_unit)


def load_recipe(path: str | Path) -> dict:
    """A recipe file (YAML or JSON) as a dict of config keys. Raises ConfigError for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different error types; both mean "unreadable recipe"
        raise ConfigError(f"--config {path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings")
    return data


__all__ = ["RunConfig", "SFTRunConfig", "GRPORunConfig", "LANGUAGE_LORA_TARGETS", "load_recipe"]
