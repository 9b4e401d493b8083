"""Model families: a small registry keyed by `model_type`, and reading a Hugging Face checkpoint folder.

Only what the runtime needs is read here (config.json, preprocessor_config.json, tokenizer.json), with plain
json: no transformers. Supported: Qwen2.5-VL. Adding a family means one registry entry and its adapter.
`load_pretrained` is the one weight loader of the project (safetensors only, never pickle); callers pass the
transformers class, so this module still imports no transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .views import Geometry


@dataclass(frozen=True)
class Family:
    model_type: str
    title: str


FAMILIES = {"qwen2_5_vl": Family("qwen2_5_vl", "Qwen2.5-VL")}
# Written by training next to a trained checkpoint: the protocol and crop set the policy speaks.
POLICY_FILE = "edge_awares_policy.json"


@dataclass
class CheckpointInfo:
    path: Path
    family: Family
    config: dict
    geometry: Geometry  # the checkpoint's own processor sizing (native view)
    policy: dict | None = None  # POLICY_FILE's content for checkpoints trained here

    def protocol_name(self, default: str) -> str:
        """The protocol this checkpoint was trained with, else `default`."""
        return (self.policy or {}).get("protocol", {}).get("name", default)


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validate a Hugging Face folder and read its family and view geometry. ModelLoadError names the problem."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such checkpoint folder")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{path}: not a Hugging Face checkpoint (no config.json)")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{cfg_file}: unreadable ({e})") from None
    mtype = config.get("model_type")
    if mtype not in FAMILIES:
        raise ModelLoadError(f"{path}: model_type {mtype!r} is not supported; supported: {', '.join(FAMILIES)}")
    arch = config.get("architectures") or []
    if not isinstance(arch, list) or any(not isinstance(a, str) or not a.startswith("Qwen2_5_VL") for a in arch):
        raise ModelLoadError(f"{path}: architectures {arch!r} name another model family than {FAMILIES[mtype].title} "
                             "(model_type says otherwise: a mismatched config)")
    require_safetensors(path)
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path}: no tokenizer.json")
    v = config.get("vision_config", {})
    geo = dict(patch_size=int(v.get("patch_size", 14)), merge_size=int(v.get("spatial_merge_size", 2)),
               temporal_patch_size=int(v.get("temporal_patch_size", 2)))
    pp_file = path / "preprocessor_config.json"
    if pp_file.is_file():
        try:
            pp = json.loads(pp_file.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{pp_file}: unreadable ({e})") from None
        size = pp.get("size") or {}
        geo["min_pixels"] = int(pp.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
        geo["max_pixels"] = int(pp.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)
        if pp.get("image_mean"):
            geo["image_mean"] = tuple(pp["image_mean"])
            geo["image_std"] = tuple(pp["image_std"])
    policy = None
    if (path / POLICY_FILE).is_file():
        try:
            policy = json.loads((path / POLICY_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path / POLICY_FILE}: unreadable ({e})") from None
    return CheckpointInfo(path=path, family=FAMILIES[mtype], config=config, geometry=Geometry(**geo), policy=policy)


def require_safetensors(path: str | Path) -> Path:
    """`path` as a Path if it is a checkpoint folder with *.safetensors weights. ModelLoadError otherwise: a folder
    holding only pickle weights (`pytorch_model.bin`) is refused here, before any loader could unpickle it."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such checkpoint folder")
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) or ["none"]
        raise ModelLoadError(f"{path}: no *.safetensors weights (found {', '.join(found[:3])}; pickle .bin "
                             "files are not loaded: convert them to safetensors)")
    return path


def load_pretrained(classes, path: str | Path, **kwargs):
    """The one place the project loads transformers weights: `cls.from_pretrained(path, use_safetensors=True,
    trust_remote_code=False, **kwargs)`, so torch.load (pickle) and checkpoint code never run.

    `classes`: a transformers model class, or several tried in order (the next one is tried when a class does not
    accept the folder's config, e.g. AutoModelForCausalLM on a VLM). Raises ModelLoadError: no safetensors
    weights, or transformers could not load them.
    """
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    path = require_safetensors(path)
    classes = classes if isinstance(classes, (tuple, list)) else (classes,)
    error = None
    for cls in classes:
        level = hf_logging.get_verbosity()
        # transformers prints a multi-line load report before it raises on mismatched shapes; the error below
        # says it in one line
        hf_logging.set_verbosity_error()
        try:
            model, info = cls.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False,
                                              output_loading_info=True, **kwargs)
            # transformers fills missing or mis-shaped weights with random ones and only logs it: a checkpoint
            # that lacks weights would run as noise, so it is refused
            for what in ("missing_keys", "mismatched_keys"):
                keys = sorted(str(k) for k in info.get(what) or ())
                if keys:
                    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
                    raise ModelLoadError(f"{path}: the checkpoint's weights do not fit config.json "
                                         f"({what.replace('_keys', '')}: {shown})")
            return model
        except ValueError as e:  # e.g. "Unrecognized configuration class" for this Auto class: try the next
            error = e
        except SafetensorError as e:  # a truncated or corrupt file
            error = f"a safetensors file is truncated or corrupt: {e}"
            break
        except RuntimeError as e:  # transformers: weights whose shapes config.json does not describe
            text = str(e)
            error = ("the weights' shapes do not match config.json" if "mismatched" in text or "size mismatch" in text
                     else text.splitlines()[0] if text else type(e).__name__)
            break
        except (OSError, KeyError) as e:
            error = e
            break
        finally:
            hf_logging.set_verbosity(level)
    raise ModelLoadError(f"{path}: cannot load weights ({error})") from None
