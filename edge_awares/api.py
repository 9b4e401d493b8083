"""Library entry points behind the CLI: one frozen config per command, validated before heavy work.

    from edge_awares.api import AskConfig, ask
    result = ask(AskConfig(image="doc.png", question="What is the total?", model="ckpt/"))
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .crops import AWARES_CROPS, CropSet
from .errors import ConfigError, PromptError
from .images import load_image
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
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
    extra: dict = field(default_factory=dict)

    def validate(self) -> "AskConfig":
        if self.model and self.engine:
            raise ConfigError("give --model or --engine, not both")
        if not self.question or not self.question.strip():
            raise PromptError("the question is empty")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; legal: {', '.join(PROTOCOLS)}")
        check_limits(self.max_new_tokens, self.max_crop_turns, self.max_context)
        if self.temperature < 0:
            raise ConfigError("--temperature must be 0 or more")
        parse_crop_policy(self.crops, AWARES_CROPS)
        return self


def check_limits(max_new_tokens: int | None = None, max_crop_turns: int | None = None,
                 max_context: int | None = None) -> None:
    """ConfigError for a generation limit outside its legal range (None: unset, checked later by the engine)."""
    if max_new_tokens is not None and not 1 <= max_new_tokens <= 1 << 16:
        raise ConfigError("--max-new-tokens must lie in [1, 65536]")
    if max_crop_turns is not None and not 0 <= max_crop_turns <= 16:
        raise ConfigError("--max-crop-turns must lie in [0, 16]")
    if max_context is not None and not 64 <= max_context <= 1 << 20:
        raise ConfigError("--max-context must lie in [64, 1048576]")


# The demo policy this project trains itself (edge-awares train demo --ship): an int8 ONNX engine of a ~3M-parameter
# Qwen2.5-VL that reads the card documents of edge_awares.data.cards (examples/cards_*.png).
DEMO_ENGINE = Path(__file__).resolve().parent / "assets" / "demo-engine"


def demo_engine() -> Path | None:
    """The shipped demo engine, or None when this checkout has none (then `ask` falls back to a tiny random one)."""
    return DEMO_ENGINE if (DEMO_ENGINE / "manifest.json").is_file() else None


def default_tiny_checkpoint() -> Path:
    """A tiny random-init checkpoint built once into the user cache (until a trained demo engine ships)."""
    from .tiny import make_tiny_checkpoint

    from .paths import cache_dir

    root = cache_dir()
    path = root / "tiny-qwen2_5_vl"
    if not (path / "model.safetensors").is_file():
        tmp = root / f".tiny-{os.getpid()}"
        make_tiny_checkpoint(tmp)
        if path.exists():  # an earlier build that stopped before its weights were written
            shutil.rmtree(path)
        tmp.replace(path)  # built aside and moved in whole, so a half-written folder is never used
    return path


def open_session(model: str | Path | None = None, engine: str | Path | None = None, protocol: str | None = None,
                 config: SessionConfig | None = None, provider: str = "cpu", crop_set: CropSet = AWARES_CROPS,
                 overrides: dict | None = None, **protocol_options) -> Session:
    """A Session over a checkpoint (torch reference backend) or an engine directory. `config` None: the
    engine's stored generation limits (or SessionConfig's defaults); `overrides` replace its fields not None."""
    if engine is not None:
        from .runtimes.onnx import open_engine_session

        return open_engine_session(engine, protocol=protocol, config=config, provider=provider, overrides=overrides)
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
                               overrides={"max_new_tokens": cfg.max_new_tokens, "max_crop_turns": cfg.max_crop_turns,
                                          "max_context": cfg.max_context})
    sampler = Sampler(cfg.temperature, seed=cfg.seed)
    return session.run(image, cfg.question, crops=cfg.crops, sampler=sampler)
