"""The PyTorch/transformers reference backend: the oracle for parity tests and the rollout engine for GRPO.

Loads any Hugging Face Qwen2.5-VL folder (safetensors only, no remote code) and implements the Backend
interface over the model's own modules (vision tower, token embeddings, language model + lm_head), so the
session loop, positions and prompts are exactly those every exported backend uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_awares.errors import BackendUnavailableError, ModelLoadError
from edge_awares.models import load_pretrained, read_checkpoint
from edge_awares.views import View


def _import_torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise BackendUnavailableError(
            f"the torch reference backend needs torch and transformers ({e.name} is missing): "
            "pip install 'edge-awares[torch]'") from None
    # The CLI prints its own progress; transformers' weight-loading bars would only add noise.
    transformers.utils.logging.disable_progress_bar()
    return torch, transformers


class TorchCache:
    """A transformers DynamicCache with the session-facing Cache interface."""

    def __init__(self, config, capacity: int):
        from transformers import DynamicCache

        self.dc = DynamicCache(config=config)
        self._capacity = capacity

    @property
    def length(self) -> int:
        return int(self.dc.get_seq_length())

    @property
    def capacity(self) -> int:
        return self._capacity

    def rewind(self, n: int) -> None:
        self.dc.crop(n)

    def snapshot(self, n: int):
        """A copy of the cache cut to its first `n` positions (the prefix cache keeps it)."""
        import copy

        snap = copy.deepcopy(self.dc)
        snap.crop(n)
        return snap

    def snapshot_bytes(self, n: int) -> int:
        layers = getattr(self.dc, "layers", [])
        per = sum(int(t.element_size() * t[..., :n, :].numel()) for layer in layers
                  for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
        return per

    def restore(self, snap, n: int) -> None:
        import copy

        if self.length:
            raise ValueError(f"cannot restore into a cache holding {self.length} tokens")
        self.dc = copy.deepcopy(snap)
        self.dc.crop(n)


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, dtype: str = "float32", device: str = "cpu",
                 model=None, streamed: bool = False):
        """`streamed`: keep no weights resident; every module reads its own from the checkpoint when it
        runs and drops them after (the same float32 arithmetic, memory of one module at a time; slower)."""
        torch, transformers = _import_torch()
        self.torch = torch
        if model is None:
            info = read_checkpoint(model_dir)
            if streamed:
                model = _streamed_model(info.path, getattr(torch, dtype))
            else:
                model = load_pretrained(transformers.Qwen2_5_VLForConditionalGeneration, info.path,
                                        dtype=getattr(torch, dtype))
        self.streamed = streamed
        if streamed and device != "cpu":
            raise ModelLoadError("the streamed reference runs on the CPU only")
        self.model = (model if streamed else model.to(device)).eval()
        self.device = torch.device(device)
        text_cfg = self.model.config.get_text_config()
        self.hidden_size = int(text_cfg.hidden_size)
        self.vocab_size = int(self.model.lm_head.out_features)
        self._text_cfg = text_cfg
        self._cache_kw = cache_keyword(self._inner.language_model)

    @property
    def _inner(self):
        return self.model.model

    def encode_images(self, views: list[View]) -> list[np.ndarray]:
        torch = self.torch
        pv = np.concatenate([v.pixel_values() for v in views], axis=0)
        grid = torch.tensor([v.grid_thw for v in views], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            pixel = torch.from_numpy(pv).to(self.device, self._inner.visual.dtype)
            out = self._inner.visual(pixel, grid_thw=grid).pooler_output.float().cpu().numpy()
        return np.split(out, np.cumsum([v.n_tokens for v in views])[:-1])

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)
            return self._inner.language_model.embed_tokens(t).float().cpu().numpy()

    def new_cache(self, capacity: int) -> TorchCache:
        return TorchCache(self._text_cfg, capacity)

    def forward(self, embeds: np.ndarray, positions: np.ndarray, cache: TorchCache) -> np.ndarray:
        return self.forward_all(embeds, positions, cache, last_only=True)[-1]

    def forward_all(self, embeds: np.ndarray, positions: np.ndarray, cache: TorchCache | None,
                    last_only: bool = False) -> np.ndarray:
        """Logits [n, vocab] for the appended positions (only the last if `last_only`)."""
        torch = self.torch
        lm = self._inner.language_model
        with torch.inference_mode():
            e = torch.from_numpy(np.ascontiguousarray(embeds)).to(self.device, lm.dtype)[None]
            p = torch.from_numpy(np.ascontiguousarray(positions)).to(self.device)[:, None, :]
            out = lm(inputs_embeds=e, position_ids=p, use_cache=True, **{self._cache_kw: cache.dc if cache else None})
            h = out.last_hidden_state[0]
            return self.model.lm_head(h[-1:] if last_only else h).float().cpu().numpy()


def cache_keyword(module) -> str:
    """The keyword a transformers decoder takes its KV cache under: `cache` from transformers 5.24 (which
    deprecates `past_key_values`, removed in 5.40), `past_key_values` before. Read from the signature, not the
    version: an older forward takes `cache=` silently into **kwargs and would run without the cache."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _streamed_model(path: Path, dtype):
    """A Qwen2.5-VL whose parameters live on the meta device and are read from the checkpoint by each module
    just before it runs (and released right after), so a model of any size runs in one module's memory.

    accelerate's offload hooks do the same for weights it saved itself; here the weights stay in the
    checkpoint as stored (bf16 usually) under their hub names, so the loader is edge_awares.weights.
    """
    import torch
    import transformers

    from edge_awares.weights import WeightSource

    src = WeightSource(path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read config ({e})") from None
    with torch.device("meta"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model = model.to(dtype)
    # Rotary tables are computed buffers, not weights: rebuild them on the CPU.
    for mod_name, mod in list(model.named_modules()):
        if hasattr(mod, "inv_freq") and mod.inv_freq.is_meta:
            real = type(mod)(mod.config)
            for b, value in real.named_buffers(recurse=False):
                setattr(mod, b, value)
    tied = "lm_head.weight" not in src
    for mod_name, mod in model.named_modules():
        own = [n for n, _ in mod.named_parameters(recurse=False)]
        if not own:
            continue
        names = {}
        for n in own:
            full = f"{mod_name}.{n}"
            if full == "lm_head.weight" and tied:
                full = "model.language_model.embed_tokens.weight"
            src.info(full)  # fail now, not mid-forward, if the checkpoint lacks it
            names[n] = full

        def load(module, args, names=names):
            for n, full in names.items():
                t = src.tensor(full).to(dtype)
                module._parameters[n] = torch.nn.Parameter(t, requires_grad=False)

        def release(module, args, output, names=names):
            for n in names:
                p = module._parameters[n]
                module._parameters[n] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                           requires_grad=False)

        mod.register_forward_pre_hook(load)
        mod.register_forward_hook(release)
    return model.eval()
