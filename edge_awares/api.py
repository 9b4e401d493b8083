"""Library entry points behind the CLI: one frozen config per command, validated before heavy work.

    from edge_awares.api import AskConfig, ask
    result = ask(AskConfig(image="doc.png", question="What is the total?", model="ckpt/"))
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .crops import AWARES_CROPS, CropSet
from .errors import ConfigError, PromptError
from .images import load_image
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from .ranges import MEMORY_BUDGET_GB, SEED, TEMPERATURE, limit_range
from .session import Sampler, Session, SessionConfig, SessionResult, parse_crop_policy


@dataclass(frozen=True)
class AskConfig:
    image: str
    question: str
    model: str | None = None  # Hugging Face checkpoint folder (torch reference backend)
    engine: str | None = None  # engine directory (torch-free runtime)
    protocol: str | None = None  # None: the engine's own protocol, or tool_call for a checkpoint
    crops: str = "model"
    # None: the engine's stored limits, else SessionConfig's defaults (one place for every default)
    max_new_tokens: int | None = None
    max_crop_turns: int | None = None
    max_context: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    provider: str = "cpu"
    backend: str | None = None  # which backend of the engine folder runs it (None: its default)
    memory_budget: float | None = None  # GiB the engine runtime may plan for (None: its default)
    max_rtr: float | None = None  # RTR budget of the crop loop (None: none)
    extra: dict = field(default_factory=dict)

    def validate(self) -> "AskConfig":
        if self.model and self.engine:
            raise ConfigError("give --model or --engine, not both")
        if not self.question or not self.question.strip():
            raise PromptError("the question is empty")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; legal: {', '.join(PROTOCOLS)}")
        check_limits(self.max_new_tokens, self.max_crop_turns, self.max_context)
        TEMPERATURE.check("--temperature", self.temperature)
        MEMORY_BUDGET_GB.check("--memory-budget", self.memory_budget)
        if self.seed is not None:
            SEED.check("--seed", self.seed)
        if self.max_rtr is not None:
            from .ranges import MAX_RTR

            MAX_RTR.check("--max-rtr", self.max_rtr)
        parse_crop_policy(self.crops, AWARES_CROPS)
        return self


def check_limits(max_new_tokens: int | None = None, max_crop_turns: int | None = None,
                 max_context: int | None = None) -> None:
    """ConfigError for a generation limit outside its legal range (None: unset, checked later by the engine)."""
    for name, value in (("max_new_tokens", max_new_tokens), ("max_crop_turns", max_crop_turns),
                        ("max_context", max_context)):
        limit_range(name, optional=True).check(f"--{name.replace('_', '-')}", value)


# The demo policy this project trains itself (edge-awares train demo --ship): an int8 ONNX engine of a ~3M-parameter
# Qwen2.5-VL that reads the card documents of edge_awares.data.cards (examples/cards_*.png).
DEMO_ENGINE = Path(__file__).resolve().parent / "assets" / "demo-engine"
# The demo policy's base model (plain protocol, one view): what the paper's baselines run, low-res only and a
# single native pass.
DEMO_BASE_ENGINE = Path(__file__).resolve().parent / "assets" / "demo-base-engine"


def demo_engine() -> Path | None:
    """The shipped demo engine, or None when this checkout has none (then `ask` falls back to a tiny random one)."""
    return DEMO_ENGINE if (DEMO_ENGINE / "manifest.json").is_file() else None


def require_demo_engine(baseline: bool = False) -> str:
    """The shipped demo engine's folder, the default of a command given neither --engine nor --model (profile,
    eval); with `baseline`, the shipped base model's engine instead (eval's --native and --crops none, the
    paper's baselines). ConfigError when this checkout has none."""
    if baseline:
        if not (DEMO_BASE_ENGINE / "manifest.json").is_file():
            raise ConfigError("the baselines (--native, --crops none) need --engine or --model of a base model: "
                              "this checkout ships no demo base engine (the shipped demo engine is a crop policy)")
        return str(DEMO_BASE_ENGINE)
    shipped = demo_engine()
    if shipped is None:
        raise ConfigError("give --engine DIR or --model CKPT (this checkout has no shipped demo engine)")
    return str(shipped)


def default_tiny_checkpoint() -> Path:
    """A tiny random-init checkpoint built once into the user cache (until a trained demo engine ships)."""
    from .tiny import make_tiny_checkpoint

    from .paths import cache_dir

    root = cache_dir()
    path = root / "tiny-qwen2_5_vl"
    if not (path / "model.safetensors").is_file():
        from .outputs import is_ours

        if path.exists() and not is_ours(path, "checkpoint"):
            # An older version's build that stopped before its weights: this name in our own cache is ours.
            shutil.rmtree(path)
        make_tiny_checkpoint(path, force=True)  # built aside and renamed into place whole
    return path


def open_session(model: str | Path | None = None, engine: str | Path | None = None, protocol: str | None = None,
                 config: SessionConfig | None = None, provider: str = "cpu", crop_set: CropSet = AWARES_CROPS,
                 overrides: dict | None = None, memory_budget: float | None = None, backend: str | None = None,
                 **protocol_options) -> Session:
    """A Session over a checkpoint (torch reference backend) or an engine directory. `config` None: the
    engine's stored generation limits (or SessionConfig's defaults); `overrides` replace its fields not None.
    `memory_budget` (GiB) bounds an engine runtime (None: its default); the torch reference has none. `backend`
    picks one of the engine folder's backends (None: its default)."""
    if engine is not None:
        from .runtimes import open_engine_session

        budget = None if memory_budget is None else int(memory_budget * (1 << 30))
        return open_engine_session(engine, protocol=protocol, config=config, provider=provider, overrides=overrides,
                                   memory_budget_bytes=budget, backend=backend)
    if backend is not None:
        raise ConfigError("--backend picks one of an engine folder's backends (--engine); --model runs the torch "
                          "reference")
    if memory_budget is not None:
        raise ConfigError("--memory-budget bounds an engine runtime (--engine); the torch reference (--model) has none")
    from .models import read_checkpoint
    from .runtimes.reference import TorchBackend
    from .tokenizer import TextTokenizer

    info = read_checkpoint(model)
    backend = TorchBackend(info.path)
    proto = get_protocol(protocol or info.protocol_name(DEFAULT_PROTOCOL), **protocol_options)
    config = (config or SessionConfig()).with_overrides(**(overrides or {}))
    return Session(backend, TextTokenizer.from_file(info.path), proto, crop_set, info.geometry, config)


def ask(cfg: AskConfig, session: Session | None = None) -> SessionResult:
    """Answer one question about one image. Raises EdgeAwaresError subclasses on bad input."""
    cfg.validate()
    image = load_image(cfg.image)
    if session is None:
        model = cfg.model
        engine = cfg.engine
        if model is None and engine is None:
            shipped = demo_engine()
            if shipped is not None:
                engine = str(shipped)
            else:
                model = str(default_tiny_checkpoint())
        session = open_session(model=model, engine=engine, protocol=cfg.protocol, provider=cfg.provider,
                               memory_budget=cfg.memory_budget, backend=cfg.backend,
                               overrides={"max_new_tokens": cfg.max_new_tokens, "max_crop_turns": cfg.max_crop_turns,
                                          "max_context": cfg.max_context})
    sampler = Sampler(cfg.temperature, seed=cfg.seed)
    return session.run(image, cfg.question, crops=cfg.crops, sampler=sampler, max_rtr=cfg.max_rtr)
