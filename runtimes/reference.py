"""The PyTorch/transformers reference backend: the oracle for parity tests and the rollout engine for GRPO.

Loads any Hugging Face Qwen2.5-VL folder (safetensors only, no remote code) and implements the Backend
interface over the model's own modules (vision tower, token embeddings, language model + lm_head), so the
session loop, positions and prompts are exactly those every exported backend uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_awares.errors import BackendUnavailableError, ModelLoadError
from edge_awares.models import read_checkpoint
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


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: str | Path | None = None, dtype: str = "float32", device: str = "cpu",
                 model=None):
        torch, transformers = _import_torch()
        self.torch = torch
        if model is None:
            info = read_checkpoint(model_dir)
            try:
                model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
                    str(info.path), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False)
            except (OSError, ValueError, KeyError) as e:
                raise ModelLoadError(f"{model_dir}: cannot load weights ({e})") from None
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        text_cfg = self.model.config.get_text_config()
        self.hidden_size = int(text_cfg.hidden_size)
        self.vocab_size = int(self.model.lm_head.out_features)
        self._text_cfg = text_cfg

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
            out = lm(inputs_embeds=e, position_ids=p, past_key_values=cache.dc if cache else None, use_cache=True)
            h = out.last_hidden_state[0]
            return self.model.lm_head(h[-1:] if last_only else h).float().cpu().numpy()
