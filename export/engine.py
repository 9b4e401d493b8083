"""Checkpoint -> engine directory: export, quantize, verify against the reference, then move into place.

    from edge_awares.export.engine import ExportConfig, export_engine
    export_engine(ExportConfig(checkpoint="ckpt/", output="engine/", precision="int4"))
    export_engine(ExportConfig(checkpoint="ckpt/", output="engine/", precision="q8_0", formats=("gguf",)))

An engine folder holds one or more backends' files under one manifest: ONNX graphs (`onnx`) and GGUF files for
llama.cpp (`gguf`, export/gguf.py), each at the precision asked (a precision's name in either family selects the
matching one in the other: int8 <-> q8_0, manifest.BACKEND_PRECISIONS).

The graphs are written straight from the checkpoint's tensors at the asked precision, one tensor at a time
(export/builder.py), after a memory and disk plan says the machine can hold the job (export/plan.py). The
engine is then checked against the PyTorch reference: the reference runs first and is released, then the
engine runs the same conversations. fp32 must reproduce the reference's greedy tokens; every precision must
pass its acceptance gate (GATES: teacher-forced top-1 agreement and relative logit error), else the export
fails with a typed error. Everything is written into a temporary sibling of the output directory and only a
complete, verified engine is renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_awares import __version__
from edge_awares.crops import AWARES_CROPS, get_crop_set
from edge_awares.errors import ConfigError, EdgeAwaresError, ExportError, ExportGateError
from edge_awares.manifest import (BACKEND_PRECISIONS, BACKENDS, FORMAT, PRECISIONS, SCHEMA_VERSION, file_entry,
                                  load_manifest, write_manifest)
from edge_awares.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from edge_awares.runtimes.onnx import DECODER_INPUTS, DECODER_OUTPUTS
from edge_awares.runtimes.vision_layout import VISION_INPUTS, VISION_OUTPUT

from . import verify

OPSET = 18
# fp32 must reproduce the reference's tokens exactly; logits may differ by float reordering only.
FP32_REL_TOLERANCE = 1e-3
# The acceptance gate per precision: (minimum teacher-forced top-1 agreement, maximum relative logit error)
# against the float32 reference on the verification conversations. Configuration: ExportConfig.min_top1 /
# max_rel_logit_err (CLI --min-top1 / --max-rel-logit-err) override it for one export.
GATES = {"fp32": (1.0, FP32_REL_TOLERANCE), "fp16": (0.98, 0.02), "int8": (0.90, 0.10), "int4": (0.75, 0.30)}
# llama.cpp's float engines: its qwen2vl text path differs from transformers by about 1% of the logits on random
# weights (FACTS.md), so f32/f16 are held to the fp16 engine's top-1 bound with a wider logit bound; q8_0 and q4_K
# pass the same gate as the int8 and int4 ONNX engines.
GGUF_GATES = {"f32": (0.98, 0.05), "f16": (0.98, 0.05), "q8_0": GATES["int8"], "q4_K": GATES["int4"]}
FORMATS = BACKENDS  # export --format: onnx, gguf (a folder may hold both)
# every precision name either family knows -> the ONNX family's name (the canonical one)
_CANONICAL = {name: canon for table in BACKEND_PRECISIONS.values() for name, canon in table.items()}
VISION_PRECISIONS = ("fp32", "fp16", "int8", "int8-qdq")


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    output: str
    precision: str = "fp32"
    protocol: str | None = None  # None: the protocol the checkpoint was trained with, else tool_call
    protocol_options: dict | None = None  # None: the checkpoint's own (edge_awares_policy.json)
    crop_set: str | None = None  # None: the checkpoint's own, else AwaRes's ten crops
    # None: as `precision`, int8 (dynamic, per channel) for int4; int8-qdq: static Q/DQ calibrated on views
    # (calib_images), the form TensorRT reads for explicit INT8
    vision_precision: str | None = None
    calib_images: tuple[str, ...] = ()
    int4_block_size: int = 32
    int4_accuracy_level: int = 4
    max_new_tokens: int | None = None  # None: SessionConfig's default
    max_context: int | None = None  # None: SessionConfig's default
    verify_tokens: int = 12  # greedy tokens per turn compared against the reference
    reference: str = "auto"  # auto | resident | streamed (the float32 reference's weights during verification)
    memory_budget_gb: float | None = None  # None: the memory available when the export starts
    min_top1: float | None = None  # None: GATES[precision]
    max_rel_logit_err: float | None = None
    gate: bool = True  # False: record the deviation only (never for fp32)
    force: bool = False  # replace an existing engine of ours (never any other folder, never the checkpoint)
    formats: tuple[str, ...] = ("onnx",)  # the backends written into the folder: onnx, gguf, or both

    def __post_init__(self):
        # `precision` is kept in the ONNX family's names; a GGUF name (q8_0) selects its match (int8).
        if self.precision in _CANONICAL:
            object.__setattr__(self, "precision", _CANONICAL[self.precision])
        object.__setattr__(self, "formats", tuple(self.formats))

    def precision_for(self, backend: str) -> str:
        """The precision name `backend` uses for this export's precision (gguf: int8 -> q8_0)."""
        return {canon: name for name, canon in BACKEND_PRECISIONS[backend].items()}[self.precision]

    def inputs(self) -> tuple[str, ...]:
        """What the export reads: the output may be none of these, nor a folder holding one."""
        return (self.checkpoint, *self.calib_images)

    def resolved_vision_precision(self) -> str:
        if self.vision_precision:
            return self.vision_precision
        return {"int4": "int8"}.get(self.precision, self.precision)

    def gate_bounds(self, backend: str = "onnx") -> tuple[float, float]:
        top1, rel = GATES[self.precision] if backend == "onnx" else GGUF_GATES[self.precision_for(backend)]
        return (top1 if self.min_top1 is None else self.min_top1,
                rel if self.max_rel_logit_err is None else self.max_rel_logit_err)

    def validate(self) -> "ExportConfig":
        if self.vision_precision not in (None, *VISION_PRECISIONS):
            raise ConfigError(f"unknown vision precision {self.vision_precision!r}; legal: {', '.join(VISION_PRECISIONS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; legal: {', '.join(_CANONICAL)}")
        if not self.formats or len(set(self.formats)) != len(self.formats) or not set(self.formats) <= set(FORMATS):
            raise ConfigError(f"--format {','.join(self.formats) or '(none)'} is not a list of distinct formats; "
                              f"legal: {', '.join(FORMATS)} (comma-separated for several)")
        if "gguf" in self.formats:
            from .gguf import llama_cpp_version

            llama_cpp_version()  # installed, before any work
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; legal: {', '.join(PROTOCOLS)}")
        if self.crop_set is not None:
            get_crop_set(self.crop_set)
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ConfigError("--int4-block-size must be one of 16, 32, 64, 128, 256")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError("--int4-accuracy-level must be 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")
        if self.reference not in ("auto", "resident", "streamed"):
            raise ConfigError("--reference must be auto, resident or streamed")
        from edge_awares.ranges import Range

        Range(0.0, 1 << 20, lo_open=True, optional=True).check("--memory-budget", self.memory_budget_gb)
        Range(0.0, 1.0, optional=True).check("--min-top1", self.min_top1)
        Range(0.0, 1e6, optional=True).check("--max-rel-logit-err", self.max_rel_logit_err)
        Range(1, 256, integer=True).check("--verify-tokens", self.verify_tokens)
        from edge_awares.api import check_limits

        check_limits(max_new_tokens=self.max_new_tokens, max_context=self.max_context)
        for p in self.calib_images:
            if not Path(p).is_file():
                raise ConfigError(f"calibration image {p} does not exist")
        from edge_awares.outputs import prepare_dir

        # Before any work: an existing folder must be an engine of ours (and --force given), never the input.
        prepare_dir(self.output, "engine", force=self.force, inputs=self.inputs())
        return self


def export_engine(cfg: ExportConfig, log=print) -> Path:
    """Build, verify and atomically place an engine directory; returns its path.

    Raises ConfigError (bad options, a plan the machine cannot hold) / ModelLoadError before any work,
    ExportError if a graph fails to build, the fp32 graphs do not reproduce the reference's tokens, or the
    engine falls below its acceptance gate. On any failure nothing is left at `cfg.output`.
    """
    from edge_awares.models import read_checkpoint

    from edge_awares.outputs import building, is_write_failure, output_error

    cfg.validate()
    info = read_checkpoint(cfg.checkpoint)
    out = Path(cfg.output).resolve()
    try:
        # Built in a partial sibling that records its owner (a killed export's is removed by the next one) and
        # renamed into place whole; --force replaces only an engine of ours, never the checkpoint.
        with building(out, "engine", force=cfg.force, inputs=cfg.inputs(), log=log) as tmp:
            _build(cfg, info, tmp, log)
            _publish_permissions(tmp)
    except EdgeAwaresError:
        raise
    except Exception as e:
        if is_write_failure(e, out.parent, cfg.inputs()):
            raise output_error(out, e) from None
        raise ExportError(f"export of {cfg.checkpoint} failed: {type(e).__name__}: {e}") from e
    return out


def _publish_permissions(root: Path) -> None:
    """mkdtemp makes the directory private; an engine is shared read-only."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for f in root.iterdir():
        f.chmod(0o666 & ~mask)


class _Progress:
    """One progress bar per stage on stderr (rich), silent when stderr is not a terminal."""

    def __init__(self):
        import sys

        self.live = sys.stderr.isatty()

    def stage(self, label: str, total: int):
        import contextlib

        if not self.live:
            return contextlib.nullcontext(lambda n: None)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        @contextlib.contextmanager
        def bar():
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(stderr=True), transient=False) as prog:
                task = prog.add_task(label, total=total)
                yield lambda n: prog.update(task, completed=n)

        return bar()


def _build(cfg: ExportConfig, info, tmp: Path, log) -> None:
    from edge_awares.session import SessionConfig
    from edge_awares.weights import WeightSource

    from .builder import TextShape, VisionShape
    from .plan import GiB, plan_export

    t_start = time.perf_counter()
    policy = info.policy or {}
    own_protocol = policy.get("protocol") or {}
    proto_name = cfg.protocol or own_protocol.get("name", DEFAULT_PROTOCOL)
    options = cfg.protocol_options
    if options is None:  # the checkpoint's own options travel with its protocol
        options = {k: v for k, v in own_protocol.items() if k != "name"} if own_protocol.get("name") == proto_name else {}
    protocol = get_protocol(proto_name, **options)
    if cfg.crop_set is not None:
        crop_set = get_crop_set(cfg.crop_set)
    elif policy.get("crop_set"):
        from edge_awares.crops import CropSet

        crop_set = CropSet.from_dict(policy["crop_set"])
    else:
        crop_set = AWARES_CROPS
    limits = SessionConfig().with_overrides(max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context)

    src = WeightSource(info.path)
    text = TextShape.from_config(info.config, src)
    vshape = VisionShape.from_config(info.config)
    vision_precision = cfg.resolved_vision_precision()
    plan = plan_export(src, text, vshape, cfg.precision, vision_precision, cfg.int4_block_size, Path(cfg.output),
                       cfg.reference, int(cfg.memory_budget_gb * GiB) if cfg.memory_budget_gb else None)
    for line in plan.lines():
        log(line)
    plan.check()

    backends, digests, calibration = {}, {}, None
    if "onnx" in cfg.formats:
        backends["onnx"], d, calibration = _build_onnx(cfg, info, src, text, vshape, vision_precision, protocol,
                                                       crop_set, tmp, log)
        digests.update(d)
    if "gguf" in cfg.formats:
        from .gguf import write_gguf

        backends["gguf"] = write_gguf(info.path, tmp, cfg.precision_for("gguf"), log)
    shutil.copyfile(info.path / "tokenizer.json", tmp / "tokenizer.json")

    model_meta = {
        "hidden_size": text.hidden, "vocab_size": text.vocab, "num_layers": text.layers, "num_heads": text.heads,
        "num_kv_heads": text.kv_heads, "head_dim": text.head_dim, "parameters": src.numel,
        "tied_embeddings": text.tied,
        "vision": {
            "hidden_size": vshape.hidden, "depth": vshape.depth, "num_heads": vshape.heads,
            "patch_size": vshape.patch, "merge_size": vshape.merge, "temporal_patch_size": vshape.temporal,
            "window_size": vshape.window, "window_patches": (vshape.window // vshape.patch) ** 2,
            "fullatt_block_indexes": vshape.fullatt, "in_features": vshape.in_features,
            "out_hidden_size": vshape.out_hidden,
        },
    }
    tok_ids = _special_tokens(tmp / "tokenizer.json")
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "family": info.family.model_type,
        "model": model_meta, "protocol": protocol.to_dict(), "crop_set": crop_set.to_dict(),
        "geometry": info.geometry.to_dict(), "special_tokens": tok_ids, "tokenizer": "tokenizer.json",
        "generation": {"max_new_tokens": limits.max_new_tokens, "max_crop_turns": limits.max_crop_turns,
                       "max_context": limits.max_context, "temperature": 0.0,
                       "stop_tokens": [t for t in ("<|im_end|>", "<|endoftext|>") if t in tok_ids]},
        "backends": backends,
        "files": {},
        "provenance": {
            "source_checkpoint": str(info.path), "source_sha256": checkpoint_hash(info.path),
            "toolkit": f"edge-awares {__version__}", "exporter": f"edge_awares.export.builder (streaming), opset {OPSET}",
            "versions": _versions(), "options": _options(cfg), "created_unix": int(time.time()),
            "vision_precision": vision_precision, "plan": plan.to_dict(),
        },
    }
    if calibration:
        manifest["provenance"]["calibration"] = calibration
    manifest = _finalise(tmp, manifest, digests)
    build_s = time.perf_counter() - t_start
    log(f"files written in {build_s:.0f} s; verifying against the PyTorch reference ({plan.reference}) ...")

    images, runs = _reference_runs(info, tmp, protocol, cfg, plan)
    for name in backends:
        dev = _compare(name, tmp, images, runs, cfg, plan)
        backends[name]["verification"] = _gate(name, dev, cfg, list(dict.fromkeys(r.crops for r in runs)), plan,
                                                 log)
    size = sum(f["bytes"] for f in manifest["files"].values())
    fp32_size = 4 * src.numel  # the same model as an fp32 engine (a tied table stored once)
    manifest["sizes"] = {"engine_bytes": size, "fp32_bytes": fp32_size, "ratio_to_fp32": size / fp32_size}
    manifest["provenance"]["export_seconds"] = round(time.perf_counter() - t_start, 2)
    manifest["provenance"]["build_seconds"] = round(build_s, 2)
    write_manifest(tmp, manifest)
    log(f"engine size {size / 1e6:.1f} MB ({size / fp32_size:.2f}x fp32)")


def _build_onnx(cfg: ExportConfig, info, src, text, vshape, vision_precision: str, protocol, crop_set, tmp: Path,
                log) -> tuple[dict, dict, dict | None]:
    """The ONNX graphs and embedding table in `tmp`: (backends.onnx entry, file digests, calibration summary)."""
    from .builder import Quant, build_decoder, build_vision, kv_names

    progress = _Progress()
    q = Quant(cfg.precision, cfg.int4_block_size, cfg.int4_accuracy_level)
    log(f"writing {info.path} ({info.family.title}) as ONNX: decoder {cfg.precision}, vision {vision_precision} ...")
    digests: dict = {}
    vq = Quant("fp32" if vision_precision == "int8-qdq" else vision_precision)
    with progress.stage("vision blocks", vshape.depth) as tick:
        vision_files, d = build_vision(src, vshape, tmp / "vision.onnx", vq, tick)
    digests.update(d)
    with progress.stage("decoder layers", text.layers) as tick:
        decoder_files, d, extra = build_decoder(src, text, tmp / "decoder.onnx", q, tick)
    digests.update(d)
    vision_quant = {"fp32": "none", "fp16": "fp16", "int8": "dynamic-int8 (weights per channel)"}.get(vision_precision)
    calibration = None
    if vision_precision == "int8-qdq":
        vision_files, calibration = _vision_qdq(cfg, tmp, protocol, crop_set, info, vshape, log)
        digests.update({f: None for f in vision_files})
        vision_quant = "qdq-int8"
    if "embeddings" in extra:
        embeddings = dict(extra["embeddings"], dtype=_np_name(extra["embeddings"]["dtype"]))
    else:
        # A table of its own: untied weights, or a quantized lm_head (then the lookup rows stay float16).
        dtype = np.float32 if cfg.precision == "fp32" else np.float16
        table = src.array("model.language_model.embed_tokens.weight", dtype)
        np.save(tmp / "embed_tokens.npy", table)
        embeddings = {"file": "embed_tokens.npy", "dtype": _np_name(str(table.dtype)), "shape": list(table.shape)}
        del table
    kv_dtype = "float16" if cfg.precision == "fp16" else "float32"
    past, present = kv_names(text.layers)
    dec_quant = {"fp32": "none", "fp16": "fp16", "int8": "dynamic-int8 (weights per channel)",
                 "int4": f"int4 MatMulNBits (block {cfg.int4_block_size}, symmetric, accuracy_level "
                         f"{cfg.int4_accuracy_level})"}[cfg.precision]
    entry = {
        "precision": cfg.precision,
        "graphs": {
            "vision": {"file": "vision.onnx", "data_files": vision_files[1:], "inputs": list(VISION_INPUTS),
                       "outputs": [VISION_OUTPUT], "layout": "window-padded", "quantization": vision_quant},
            "decoder": {"file": "decoder.onnx", "data_files": decoder_files[1:], "quantization": dec_quant,
                        "kv": {"layout": "BNSH", "shape": ["batch=1", "num_kv_heads", "capacity", "head_dim"],
                               "past": past, "present": present, "shared_buffer": True, "dtype": kv_dtype,
                               "attention": "com.microsoft.GroupQueryAttention",
                               "length_inputs": ["seqlens_k", "total_sequence_length"]},
                        "inputs": list(DECODER_INPUTS), "outputs": list(DECODER_OUTPUTS), "logits": "last_position",
                        "embeds_dtype": "float32"},
            "embeddings": embeddings,
        },
    }
    return entry, digests, calibration


def _gate(backend: str, dev, cfg: ExportConfig, policies: list[str], plan, log) -> dict:
    """Hold `backend`'s deviation from the reference to its gate (ExportError / ExportGateError); its verification
    record. ONNX fp32 must reproduce the reference's tokens; every other engine passes its acceptance gate."""
    precision = cfg.precision_for(backend)
    exact = backend == "onnx" and cfg.precision == "fp32"
    top1_min, rel_max = cfg.gate_bounds(backend)
    log(f"{backend} {precision} vs PyTorch fp32: tokens {'equal' if dev.tokens_equal else 'differ'}, token agreement "
        f"{dev.token_agreement:.2%}, teacher-forced top-1 {dev.top1_agreement:.2%}, max |dlogit| "
        f"{dev.max_abs_logit_err:.3g} (rel {dev.rel_logit_err:.2e}) over {dev.positions} positions")
    passed = dev.top1_agreement >= top1_min and dev.rel_logit_err <= rel_max
    if exact:
        if not dev.tokens_equal and dev.ties_only and dev.rel_logit_err <= FP32_REL_TOLERANCE:
            # A greedy near-tie (random or very flat logits) flipped by float reordering: recorded, not fatal.
            log(f"note: tokens differ only at near-ties (gaps {dev.flip_gaps}); logits agree to {dev.max_abs_logit_err:.1e}")
        elif not dev.tokens_equal or dev.rel_logit_err > FP32_REL_TOLERANCE:
            raise ExportError(f"the fp32 ONNX graphs do not reproduce the PyTorch reference (tokens equal: "
                              f"{dev.tokens_equal}, relative logit error {dev.rel_logit_err:.2e}, tolerance "
                              f"{FP32_REL_TOLERANCE}): {dev.details}")
        passed = True
    elif not passed:
        msg = (f"the {backend} {precision} engine falls below its acceptance gate: teacher-forced top-1 agreement "
               f"{dev.top1_agreement:.2%} (minimum {top1_min:.0%}), relative logit error {dev.rel_logit_err:.2%} "
               f"(maximum {rel_max:.0%})")
        if cfg.gate:
            raise ExportGateError(msg + "; a higher precision, --int4-block-size 16/--vision-precision fp32, or "
                                  "--min-top1/--max-rel-logit-err (or --no-gate) to accept it knowingly")
        log("warning: " + msg + " (recorded; --no-gate)")
    record = _dev_record(dev)
    out = {
        "reference": "transformers (PyTorch) fp32", "reference_weights": plan.reference, "question": verify.QUESTION,
        "crop_policies": policies, "images": 1 + min(len(cfg.calib_images), 2),
        "max_new_tokens": cfg.verify_tokens, "candidate": record,
        "gate": {"min_top1": top1_min, "max_rel_logit_err": rel_max, "enforced": cfg.gate or exact, "passed": passed},
        # Bounds a re-run of the verification must stay within (tests check them); slack covers thread-count
        # and instruction-set differences between machines.
        "bounds": {"rel_logit_err": max(2 * record["rel_logit_err"], 1e-4 if exact else 0.02),
                   "top1_agreement": min(record["top1_agreement"], 1.0) * (1.0 if exact else 0.8),
                   "tokens_equal": exact and record["tokens_equal"]},
    }
    if exact:
        out["fp32"] = record
    return out


def _np_name(dtype: str) -> str:
    return {"float32": "float32", "float16": "float16"}[str(dtype)]


def _vision_qdq(cfg: ExportConfig, tmp: Path, protocol, crop_set, info, vshape, log):
    """Static Q/DQ int8 of the (just written) fp32 vision graph, calibrated on views and crops."""
    from edge_awares.calibration.vision import VisionCalibrationReader, make_calibration_set

    from . import quantize as q

    scratch = tmp / "fp32-vision"
    scratch.mkdir()
    for f in ("vision.onnx", "vision.onnx.data"):
        (tmp / f).rename(scratch / f)
    calib = make_calibration_set(list(cfg.calib_images), protocol, crop_set, info.geometry)
    log(f"calibrating the vision encoder on {calib.summary()['views']} views ({calib.source}) ...")
    reader = VisionCalibrationReader(calib, vshape.merge, vshape.window, vshape.patch)
    files = q.vision_int8(scratch / "vision.onnx", tmp / "vision.onnx", reader)
    shutil.rmtree(scratch)
    return files, dict(calib.summary(), method="minmax", activations="int8 symmetric",
                       weights="int8 symmetric per channel")


def _finalise(root: Path, manifest: dict, digests: dict | None = None) -> dict:
    """Fill the file list (sha256, bytes) for every file the manifest names; write manifest.json.
    `digests` holds hashes taken while the files were written (None: hash the file now)."""
    from edge_awares.manifest import Manifest

    files = {}
    digests = digests or {}
    view = Manifest(root, manifest)
    for backend in manifest["backends"]:
        for name in view.backend_files(backend):
            d = digests.get(name)
            files[name] = {"sha256": d[0], "bytes": d[1]} if d else file_entry(root / name)
    manifest = dict(manifest, files=files)
    write_manifest(root, manifest)
    return manifest


def _reference_runs(info, engine_dir: Path, protocol, cfg: ExportConfig, plan):
    """The reference runs the fixed conversations once, and is released; (images, runs) for every backend."""
    import gc

    from PIL import Image

    from edge_awares.images import load_image
    from edge_awares.runtimes.reference import TorchBackend
    from edge_awares.session import Session
    from edge_awares.tokenizer import TextTokenizer

    images: list[Image.Image] = [verify.fixed_image()] + [load_image(p) for p in cfg.calib_images[:2]]
    manifest = load_manifest(engine_dir, check_files=False)
    backend = TorchBackend(info.path, streamed=plan.reference == "streamed")
    ref = Session(backend, TextTokenizer.from_file(manifest.tokenizer_path()), protocol,
                  manifest.crop_set(), manifest.geometry(), _verify_config(cfg))
    runs = verify.record_reference(ref, images, max_new_tokens=cfg.verify_tokens)
    del ref, backend
    gc.collect()
    return images, runs


def _verify_config(cfg: ExportConfig):
    from edge_awares.session import SessionConfig

    from .plan import VERIFY_CONTEXT

    return SessionConfig(max_new_tokens=cfg.verify_tokens, max_context=VERIFY_CONTEXT)


def _compare(backend: str, engine_dir: Path, images, runs, cfg: ExportConfig, plan):
    """`backend`'s engine runs the reference's conversations; its deviation."""
    import gc

    from edge_awares.runtimes import open_engine_session

    # The export's own budget (its plan), not the runtime's device default: the engine is checked here.
    cand = open_engine_session(engine_dir, config=_verify_config(cfg), check_files=False, backend=backend,
                               memory_budget_bytes=plan.budget)
    dev = verify.compare_to_reference(runs, cand, images, max_new_tokens=cfg.verify_tokens)
    del cand
    gc.collect()
    return dev


def _dev_record(dev) -> dict:
    d = dev.to_dict()
    d.pop("details")
    d["flip_gaps"] = d["flip_gaps"][:16]
    return d


def _special_tokens(path: Path) -> dict:
    from edge_awares.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(path)
    out = {}
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
              "<tool_call>", "</tool_call>"):
        try:
            out[t] = tok.token_id(t)
        except EdgeAwaresError:
            continue
    return out


def checkpoint_hash(path: Path) -> str:
    """sha256 over the checkpoint's files (relative name + content hash), independent of listing order. Our own
    marker and the toolkit's outputs inside the checkpoint (an engine exported to CKPT/engine, its partial while
    it is written) are not the checkpoint and are left out."""
    import os

    from edge_awares.outputs import MARKER

    root = Path(path)
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder, d) / MARKER).exists()]
        files += [Path(folder, n) for n in names if not (n == MARKER and Path(folder) == root)]
    h = hashlib.sha256()
    for f in sorted(f for f in files if f.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + file_entry(f)["sha256"].encode() + b"\n")
    return h.hexdigest()


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "onnx-ir"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _options(cfg: ExportConfig) -> dict:
    d = asdict(cfg)
    d["calib_images"] = [str(p) for p in cfg.calib_images]
    d.pop("output")
    return d


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def expand_images(paths) -> tuple[str, ...]:
    """Files as given; folders expanded to the images directly inside them (sorted)."""
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += [str(f) for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            out.append(str(p))
    return tuple(out)
