"""A checkpoint's weights read one tensor at a time, in their stored dtype, without loading the model.

    src = WeightSource("ckpt/")          # model.safetensors or a sharded *.safetensors.index.json
    src.shape("model.language_model.layers.0.mlp.up_proj.weight"); src.array(name)  # float32 numpy

Names are transformers 5's in-memory names (`model.language_model.*`, `model.visual.*`, `lm_head.*`);
released Qwen2.5-VL folders store `model.layers.*` / `visual.*` and are mapped on read. Every read opens
the shard, copies one tensor out and closes it again, so the mapped file never stays resident: peak memory
is one tensor (plus its float32 copy), whatever the model's size. Used by the streaming exporter and by the
reference backend's streamed mode.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelLoadError

# Bytes per element of the safetensors dtypes a checkpoint may hold.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_HEADER_CAP = 100 << 20  # a safetensors header is JSON; anything larger is not a checkpoint


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    key: str  # the name stored in the file
    dtype: str  # safetensors dtype (BF16, F32, ...)
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


def canonical_name(key: str) -> str:
    """The transformers-5 in-memory name of a stored Qwen2.5-VL key (hub layout or transformers layout)."""
    if key.startswith(("model.language_model.", "model.visual.", "lm_head.")):
        return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


def read_header(path: Path) -> dict:
    """The JSON header of one safetensors file (names, dtypes, shapes, offsets); reads no tensor data."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelLoadError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > _HEADER_CAP:
                raise ModelLoadError(f"{path}: not a safetensors file (header of {n} bytes)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: malformed safetensors header")
    header.pop("__metadata__", None)
    return header


class WeightSource:
    """Index of every tensor of a checkpoint folder by canonical name; reads them one by one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files = self._files()
        self.tensors: dict[str, TensorInfo] = {}
        for f in files:
            size = f.stat().st_size
            for key, meta in read_header(f).items():
                try:
                    dtype, shape, (start, end) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
                except (KeyError, TypeError, ValueError):
                    raise ModelLoadError(f"{f}: malformed entry {key!r} in the safetensors header") from None
                info = TensorInfo(f, key, dtype, shape)
                if end - start != info.nbytes or end > size:
                    raise ModelLoadError(f"{f}: tensor {key!r} does not fit the file (truncated checkpoint?)")
                self.tensors[canonical_name(key)] = info

    def _files(self) -> list[Path]:
        index = sorted(self.folder.glob("*.safetensors.index.json"))
        if index:
            try:
                weight_map = json.loads(index[0].read_text())["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as e:
                raise ModelLoadError(f"{index[0]}: unreadable shard index ({e})") from None
            names = sorted(set(weight_map.values()))
            for n in names:
                if "/" in n or "\\" in n or n.startswith("."):
                    raise ModelLoadError(f"{index[0]}: shard name {n!r} points outside the checkpoint")
            files = [self.folder / n for n in names]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelLoadError(f"{self.folder}: shards missing: {', '.join(missing)}")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{self.folder}: no *.safetensors weights")
        return files

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelLoadError(f"{self.folder}: checkpoint lacks tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    @property
    def stored_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    def largest(self, prefix: str = "") -> int:
        """Elements of the largest tensor whose name starts with `prefix`."""
        return max((t.numel for n, t in self.tensors.items() if n.startswith(prefix)), default=0)

    def tensor(self, name: str):
        """The stored torch tensor (its own memory; the file is closed again)."""
        from safetensors import safe_open

        info = self.info(name)
        try:
            with safe_open(str(info.file), framework="pt") as f:
                return f.get_tensor(info.key)
        except Exception as e:  # safetensors raises its own untyped errors on corrupt data
            raise ModelLoadError(f"{info.file}: cannot read tensor {info.key!r} ({e})") from None

    def array(self, name: str, dtype=np.float32) -> np.ndarray:
        """One tensor as a numpy array of `dtype` (float32 by default), upcast from bf16/fp16 as stored."""
        import torch

        t = self.tensor(name)
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy().astype(dtype, copy=False)
