"""The export's memory and disk plan, computed from the checkpoint's headers before anything is allocated.

The streaming builder holds about one tensor at a time (read in its stored dtype, its float32 copy, the
transposed or quantized form), so the build's peak is set by the largest tensor, not by the model. The
verification holds either the float32 reference (resident, when small) or one module of it (streamed),
then, after releasing it, the engine itself. The plan states each part; `check` refuses a plan the budget
cannot hold, with a message that says what would.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_awares.errors import ConfigError

GiB = 1 << 30
# The interpreter with torch, onnx and onnxruntime imported (measured ~0.6 GiB), plus allocator slack.
BASELINE = int(0.8 * GiB)
# A float32 reference up to this size is loaded once (fast); above it, it is streamed module by module.
RESIDENT_REFERENCE_MAX = 2 * GiB
# Verification conversations are short (a 560x420 page, two crops, a few tokens): their context.
VERIFY_CONTEXT = 2048
# Stored bytes per weight of a linear layer, by precision (int8/int4: their float32 scales included).
_LINEAR_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


def _linear_bytes(kind: str, in_features: int, block: int) -> float:
    scales = {"int8": 4.0 / max(in_features, 1), "int4": 4.0 / block}.get(kind, 0.0)
    return _LINEAR_BYTES[kind] + scales


@dataclass
class ExportPlan:
    parameters: int
    checkpoint_bytes: int
    engine_bytes: int  # estimated
    largest_tensor: int  # elements
    reference: str  # resident | streamed
    build_peak: int
    verify_peak: int
    peak: int
    budget: int
    disk_free: int

    def lines(self) -> list[str]:
        g = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
        return [
            f"plan: {self.parameters / 1e9:.2f}B parameters, checkpoint {g(self.checkpoint_bytes)}, engine ~"
            f"{g(self.engine_bytes)} (disk free {g(self.disk_free)})",
            f"plan: memory peak ~{g(self.peak)} of a {g(self.budget)} budget (build ~{g(self.build_peak)}, one tensor "
            f"at a time; verification ~{g(self.verify_peak)}, {self.reference} float32 reference, then the engine)",
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> "ExportPlan":
        if self.engine_bytes * 1.05 > self.disk_free:
            raise ConfigError(f"the engine needs ~{self.engine_bytes / GiB:.2f} GiB of disk and its folder's "
                              f"filesystem has {self.disk_free / GiB:.2f} GiB free")
        if self.peak > self.budget:
            raise ConfigError(
                f"this export needs ~{self.peak / GiB:.2f} GiB of memory and the budget is {self.budget / GiB:.2f} "
                f"GiB (--memory-budget; default: the memory available now). "
                + ("A streamed reference would need less: pass --reference streamed. "
                   if self.reference == "resident" else "")
                + "A lower precision needs less for the engine's own check.")
        return self


def available_memory() -> int:
    """Memory the kernel says is available now (MemAvailable), else total physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * GiB


def plan_export(src, text, vision, precision: str, vision_precision: str, block_size: int, output: Path,
                reference: str = "auto", budget: int | None = None) -> ExportPlan:
    """Plan an export of the checkpoint `src` (edge_awares.weights.WeightSource) with shapes `text`/`vision`."""
    engine = 0.0
    for name, t in src.tensors.items():
        kind = vision_precision if name.startswith("model.visual.") else precision
        if kind == "int8-qdq":
            kind = "int8"
        if len(t.shape) == 2 and "embed_tokens" not in name:
            engine += t.numel * _linear_bytes(kind, t.shape[1], block_size)
        elif len(t.shape) == 2:  # the token table
            if precision in ("fp32", "fp16"):
                engine += t.numel * _LINEAR_BYTES[precision]  # shared with the tied lm_head, or its own
            else:
                engine += t.numel * 2.0  # float16 lookup table beside the quantized lm_head
                if text.tied:
                    engine += t.numel * _linear_bytes(precision, t.shape[1], block_size)
        else:
            engine += t.numel * (2.0 if kind == "fp16" else 4.0)
    largest = src.largest()
    stored = max(t.nbytes for t in src.tensors.values())
    # read (stored dtype) + float32 copy + transposed float32 + the quantized or converted form
    build = BASELINE + stored + 3 * 4 * largest
    params = src.numel
    fp32_model = 4 * params
    if reference == "auto":
        reference = "resident" if fp32_model <= RESIDENT_REFERENCE_MAX else "streamed"
    kv = 2 * text.layers * text.kv_heads * text.head_dim * VERIFY_CONTEXT * 4
    activations = 64 * (1 << 20) + 4 * text.vocab * 64
    ref_peak = BASELINE + kv + activations + (fp32_model if reference == "resident" else 2 * (stored + 4 * largest))
    # The engine: its weights as onnxruntime's CPU provider holds them (float matmul weights are repacked
    # beside the loaded ones: up to 1.7x an fp32 engine; an fp16 engine's weights are also upcast to fp32 at
    # load: 16.2 GiB for a 7 GiB 3B fp16 engine; ~1.1x an int4 one) + KV.
    held = {"fp32": 1.75, "fp16": 3.0}.get(precision, 1.25)
    engine_peak = BASELINE + int(held * engine) + kv + activations
    verify_peak = max(ref_peak, engine_peak)
    out_parent = Path(output).resolve().parent
    while not out_parent.exists():
        out_parent = out_parent.parent
    return ExportPlan(parameters=params, checkpoint_bytes=src.stored_bytes, engine_bytes=int(engine),
                      largest_tensor=largest, reference=reference, build_peak=int(build),
                      verify_peak=int(verify_peak), peak=int(max(build, verify_peak)),
                      budget=int(budget if budget else available_memory()),
                      disk_free=shutil.disk_usage(out_parent).free)
