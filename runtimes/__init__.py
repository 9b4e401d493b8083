"""Runtime backends (engine dir or checkpoint -> Backend), and the registry that picks one for an engine folder.

Nothing heavy is imported here: each backend module imports its own library only when it is asked for, so
`import edge_awares.runtimes` stays torch-free. The manifest names the backends a folder holds
(`manifest.BACKENDS`); REGISTRY maps each name to the class that runs it, and `open_engine_session` builds the
one session loop over whichever is chosen.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

# backend name (as the manifest spells it) -> "module:class"
REGISTRY = {
    "onnx": "edge_awares.runtimes.onnx:OnnxBackend",
    "gguf": "edge_awares.runtimes.llamacpp:LlamaCppBackend",
}


def backend_class(name: str):
    """The class that runs backend `name` (ConfigError for a name the registry lacks)."""
    if name not in REGISTRY:
        from edge_awares.errors import ConfigError

        raise ConfigError(f"unknown backend {name!r}; legal: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def open_engine_session(engine: str | Path, protocol: str | None = None, config=None, provider: str = "cpu",
                        check_files: bool = True, overrides: dict | None = None, backend: str | None = None,
                        **backend_options):
    """A Session over an engine directory: its backend, tokenizer, protocol, crop set and geometry.

    `backend` picks one of the backends the folder holds (None: its only one, or the first of
    manifest.BACKENDS). `protocol` None uses the engine's own (with its options); another name overrides it (a
    warning says so, since a policy answers reliably only in the protocol it was trained with). `config` None
    takes the manifest's generation defaults. Raises EngineError subclasses, ProviderUnavailableError,
    BackendUnavailableError, ProtocolError.
    """
    from edge_awares.manifest import load_manifest
    from edge_awares.protocols import get_protocol
    from edge_awares.session import STOP_TOKENS, Session, SessionConfig
    from edge_awares.tokenizer import TextTokenizer

    if backend is not None:
        backend_class(backend)
    manifest = load_manifest(engine, check_files=False, backend=backend)
    cls = backend_class(manifest.backend)
    cls.check_provider(provider)  # before hashing a large engine
    if check_files:
        manifest.verify()
    own = manifest.protocol()
    if protocol is None or protocol == own.name:
        proto = own
    else:
        warnings.warn(f"engine {manifest.root} was exported for protocol {own.name!r}; running it with "
                      f"{protocol!r} as asked", stacklevel=2)
        proto = get_protocol(protocol)
    gen = manifest.data["generation"]
    if config is None:
        config = SessionConfig().with_overrides(**{k: int(gen[k]) for k in ("max_new_tokens", "max_crop_turns",
                                                                           "max_context") if k in gen})
    config = config.with_overrides(**(overrides or {}))
    runner = cls(manifest, provider=provider, **backend_options)
    tok = TextTokenizer.from_file(manifest.tokenizer_path())
    _check_special_tokens(manifest, tok)
    stops = gen.get("stop_tokens") or STOP_TOKENS
    return Session(runner, tok, proto, manifest.crop_set(), manifest.geometry(), config, stop_tokens=tuple(stops))


def _check_special_tokens(manifest, tok) -> None:
    """The tokenizer gives every special token the id the manifest records (the ids a token backend is fed, and
    those the exporter verified against): EngineError naming the first that differs."""
    from edge_awares.errors import EdgeAwaresError, EngineError

    for name, want in manifest.data["special_tokens"].items():
        try:
            got = tok.token_id(name)
        except EdgeAwaresError:
            got = None
        if got != want:
            raise EngineError(f"{manifest.root}: the tokenizer gives {name} id {got}, the manifest records {want}; "
                              "the tokenizer is not the one this engine was exported with")
