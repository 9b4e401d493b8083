"""Checkpoint -> engine directory: export, quantize, verify against the reference, then move into place.

    from edge_awares.export.engine import ExportConfig, export_engine
    export_engine(ExportConfig(checkpoint="ckpt/", output="engine/", precision="int4"))

Everything is written into a temporary sibling of the output directory. The fp32 graphs are verified
against the PyTorch reference first (greedy tokens over both turns must match exactly); a quantized
precision is then built from them and its deviation measured. Only a complete, verified engine is renamed
into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_awares import __version__
from edge_awares.crops import AWARES_CROPS, get_crop_set
from edge_awares.errors import ConfigError, EdgeAwaresError, ExportError
from edge_awares.manifest import FORMAT, PRECISIONS, SCHEMA_VERSION, file_entry, write_manifest
from edge_awares.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from edge_awares.runtimes.vision_layout import VISION_INPUTS, VISION_OUTPUT, vision_layout

from . import verify

OPSET = 18
# fp32 must reproduce the reference's tokens exactly; logits may differ by float reordering only.
FP32_REL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    output: str
    precision: str = "fp32"
    protocol: str | None = None  # None: the protocol the checkpoint was trained with, else tool_call
    protocol_options: dict = field(default_factory=dict)
    crop_set: str = AWARES_CROPS.name
    vision_precision: str | None = None  # None: as `precision` (int4 -> int8 Q/DQ)
    calib_images: tuple[str, ...] = ()
    int4_block_size: int = 32
    int4_accuracy_level: int = 4
    max_new_tokens: int = 64
    max_context: int = 4096
    verify_tokens: int = 12  # greedy tokens per turn compared against the reference
    force: bool = False  # replace an existing engine directory

    def resolved_vision_precision(self) -> str:
        if self.vision_precision:
            return self.vision_precision
        return {"int4": "int8"}.get(self.precision, self.precision)

    def validate(self) -> "ExportConfig":
        if self.vision_precision not in (None, "fp32", "fp16", "int8"):
            raise ConfigError(f"unknown vision precision {self.vision_precision!r}; legal: fp32, fp16, int8")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; legal: {', '.join(PRECISIONS)}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; legal: {', '.join(PROTOCOLS)}")
        get_crop_set(self.crop_set)
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ConfigError("--int4-block-size must be one of 16, 32, 64, 128, 256")
        out = Path(self.output)
        if out.exists() and not self.force:
            raise ConfigError(f"{out} already exists; remove it or pass --force")
        if self.max_context < 64:
            raise ConfigError("--max-context must be at least 64")
        for p in self.calib_images:
            if not Path(p).is_file():
                raise ConfigError(f"calibration image {p} does not exist")
        return self


def export_engine(cfg: ExportConfig, log=print) -> Path:
    """Build, verify and atomically place an engine directory; returns its path.

    Raises ConfigError / ModelLoadError before any work, ExportError if a graph fails to build or the fp32
    graphs do not reproduce the reference's tokens. On any failure nothing is left at `cfg.output`.
    """
    from edge_awares.models import read_checkpoint

    cfg.validate()
    info = read_checkpoint(cfg.checkpoint)
    out = Path(cfg.output).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _build(cfg, info, tmp, log)
        _publish_permissions(tmp)
        _place(tmp, out, cfg.force)
    except EdgeAwaresError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"export of {cfg.checkpoint} failed: {type(e).__name__}: {e}") from e
    return out


def _publish_permissions(root: Path) -> None:
    """mkdtemp makes the directory private and onnx writes external data 0600; an engine is shared read-only."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for f in root.iterdir():
        f.chmod(0o666 & ~mask)


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished directory into place (same filesystem: atomic); an old one goes only after."""
    if out.exists():
        if not force:
            raise ConfigError(f"{out} appeared during the export; not replacing it without --force")
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1e3)}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _build(cfg: ExportConfig, info, tmp: Path, log) -> None:
    from edge_awares.runtimes.reference import TorchBackend

    t_start = time.perf_counter()
    reference = TorchBackend(info.path)
    model = reference.model
    for p in model.parameters():
        p.requires_grad_(False)
    protocol = get_protocol(cfg.protocol or info.protocol_name(DEFAULT_PROTOCOL), **cfg.protocol_options)
    crop_set = get_crop_set(cfg.crop_set)
    text = model.config.get_text_config()
    vcfg = model.config.vision_config
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)

    fp32_dir = tmp / "fp32" if cfg.precision != "fp32" else tmp
    fp32_dir.mkdir(exist_ok=True)
    log(f"exporting {info.path} ({info.family.title}) to ONNX ...")
    vision_files = export_vision(model, fp32_dir / "vision.onnx")
    decoder_files, kv = export_decoder(model, fp32_dir / "decoder.onnx")
    table = model.model.language_model.embed_tokens.weight.detach().float().numpy()
    np.save(fp32_dir / "embed_tokens.npy", table)
    shutil.copyfile(info.path / "tokenizer.json", fp32_dir / "tokenizer.json")

    model_meta = {
        "hidden_size": int(text.hidden_size), "vocab_size": int(model.lm_head.out_features),
        "num_layers": int(text.num_hidden_layers), "num_heads": int(text.num_attention_heads),
        "num_kv_heads": int(text.num_key_value_heads), "head_dim": head_dim,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "vision": {
            "hidden_size": int(vcfg.hidden_size), "depth": int(vcfg.depth), "num_heads": int(vcfg.num_heads),
            "patch_size": int(vcfg.patch_size), "merge_size": int(vcfg.spatial_merge_size),
            "temporal_patch_size": int(vcfg.temporal_patch_size), "window_size": int(vcfg.window_size),
            "window_patches": (int(vcfg.window_size) // int(vcfg.patch_size)) ** 2,
            "fullatt_block_indexes": [int(i) for i in vcfg.fullatt_block_indexes],
            "in_features": 3 * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2,
            "out_hidden_size": int(vcfg.out_hidden_size),
        },
    }
    tok_ids = _special_tokens(fp32_dir / "tokenizer.json")
    base = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "family": info.family.model_type,
        "precision": "fp32", "model": model_meta, "protocol": protocol.to_dict(), "crop_set": crop_set.to_dict(),
        "geometry": info.geometry.to_dict(), "special_tokens": tok_ids, "tokenizer": "tokenizer.json",
        "generation": {"max_new_tokens": cfg.max_new_tokens, "max_crop_turns": 1, "max_context": cfg.max_context,
                       "temperature": 0.0, "stop_tokens": [t for t in ("<|im_end|>", "<|endoftext|>") if t in tok_ids]},
        "graphs": {
            "vision": {"file": "vision.onnx", "data_files": vision_files[1:], "inputs": list(VISION_INPUTS),
                       "outputs": [VISION_OUTPUT], "layout": "window-padded", "quantization": "none"},
            "decoder": {"file": "decoder.onnx", "data_files": decoder_files[1:], "kv": kv, "quantization": "none",
                        "inputs": ["inputs_embeds", "position_ids", "seqlens_k", "total_sequence_length"],
                        "outputs": ["logits"], "logits": "last_position", "embeds_dtype": "float32"},
            "embeddings": {"file": "embed_tokens.npy", "dtype": "float32", "shape": list(table.shape)},
        },
        "files": {},
        "provenance": {
            "source_checkpoint": str(info.path), "source_sha256": checkpoint_hash(info.path),
            "toolkit": f"edge-awares {__version__}", "exporter": f"torch.onnx.export (TorchScript), opset {OPSET}",
            "versions": _versions(), "options": _options(cfg), "created_unix": int(time.time()),
        },
        "verification": {},
    }

    # 1. fp32 graphs against the reference: exact greedy tokens, tiny logit error.
    fp32_manifest = _finalise(fp32_dir, base)
    dev = _verify(reference, fp32_dir, protocol, cfg)
    log(f"fp32 vs PyTorch: tokens {'equal' if dev.tokens_equal else 'DIFFER'}, max |dlogit| "
        f"{dev.max_abs_logit_err:.2e} (rel {dev.rel_logit_err:.2e}) over {dev.positions} positions")
    if not dev.tokens_equal and dev.ties_only and dev.rel_logit_err <= FP32_REL_TOLERANCE:
        # A greedy near-tie (random or very flat logits) flipped by float reordering: recorded, not fatal.
        log(f"note: tokens differ only at near-ties (gaps {dev.flip_gaps}); logits agree to {dev.max_abs_logit_err:.1e}")
    elif not dev.tokens_equal or dev.rel_logit_err > FP32_REL_TOLERANCE:
        raise ExportError(f"the fp32 ONNX graphs do not reproduce the PyTorch reference (tokens equal: "
                          f"{dev.tokens_equal}, relative logit error {dev.rel_logit_err:.2e}, tolerance "
                          f"{FP32_REL_TOLERANCE}): {dev.details}")
    fp32_size = sum(f["bytes"] for f in fp32_manifest["files"].values())
    verification = {"reference": "transformers (PyTorch) fp32", "question": verify.QUESTION,
                    "crop_policies": list(verify.CROP_POLICIES), "max_new_tokens": cfg.verify_tokens,
                    "fp32": _dev_record(dev)}

    manifest = dict(base)
    if cfg.precision != "fp32":
        log(f"quantizing to {cfg.precision} ...")
        manifest = _quantize(cfg, base, fp32_dir, tmp, protocol, crop_set, info, log)
        shutil.rmtree(fp32_dir)
        manifest = _finalise(tmp, manifest)
        qdev = _verify(reference, tmp, protocol, cfg)
        verification["candidate"] = _dev_record(qdev)
        log(f"{cfg.precision} vs PyTorch fp32: token agreement {qdev.token_agreement:.2%}, teacher-forced top-1 "
            f"{qdev.top1_agreement:.2%}, max |dlogit| {qdev.max_abs_logit_err:.3g} (rel {qdev.rel_logit_err:.2%})")
    else:
        verification["candidate"] = verification["fp32"]
    cand = verification["candidate"]
    # Bounds a re-run of the verification must stay within (tests and `edge-awares verify` check them);
    # slack covers thread-count and instruction-set differences between machines.
    verification["bounds"] = {
        "rel_logit_err": max(2 * cand["rel_logit_err"], 1e-4 if cfg.precision == "fp32" else 0.02),
        "top1_agreement": min(cand["top1_agreement"], 1.0) * (1.0 if cfg.precision == "fp32" else 0.8),
        "tokens_equal": cfg.precision == "fp32" and cand["tokens_equal"],
    }
    manifest["verification"] = verification
    manifest = _finalise(tmp, manifest)
    size = sum(f["bytes"] for f in manifest["files"].values())
    manifest["sizes"] = {"engine_bytes": size, "fp32_bytes": fp32_size, "ratio_to_fp32": size / fp32_size}
    manifest["provenance"]["export_seconds"] = round(time.perf_counter() - t_start, 2)
    write_manifest(tmp, manifest)
    log(f"engine size {size / 1e6:.1f} MB ({size / fp32_size:.2f}x fp32)")


def _quantize(cfg: ExportConfig, base: dict, fp32_dir: Path, tmp: Path, protocol, crop_set, info, log) -> dict:
    """Build the precision's graphs in `tmp` from the verified fp32 ones; returns the manifest (no file list)."""
    from edge_awares.calibration.vision import VisionCalibrationReader, make_calibration_set

    from . import quantize as q

    m = json.loads(json.dumps(base))  # deep copy
    m["precision"] = cfg.precision
    graphs = m["graphs"]
    vision_precision = cfg.resolved_vision_precision()
    if vision_precision == "fp16":
        files = q.to_fp16(fp32_dir / "vision.onnx", tmp / "vision.onnx", keep_io=["pixel_values", VISION_OUTPUT])
        graphs["vision"].update(quantization="fp16")
    elif vision_precision == "int8":
        vis = m["model"]["vision"]
        calib = make_calibration_set(list(cfg.calib_images), protocol, crop_set, info.geometry)
        log(f"calibrating the vision encoder on {calib.summary()['views']} views ({calib.source}) ...")
        reader = VisionCalibrationReader(calib, vis["merge_size"], vis["window_size"], vis["patch_size"])
        files = q.vision_int8(fp32_dir / "vision.onnx", tmp / "vision.onnx", reader)
        graphs["vision"].update(quantization="qdq-int8")
        m["provenance"]["calibration"] = dict(calib.summary(), method="minmax", activations="int8 symmetric",
                                              weights="int8 symmetric per channel")
    else:
        files = [f for f in [graphs["vision"]["file"], *graphs["vision"]["data_files"]]]
        for f in files:
            shutil.copyfile(fp32_dir / f, tmp / f)
    graphs["vision"]["data_files"] = files[1:]

    if cfg.precision == "fp16":
        files = q.to_fp16(fp32_dir / "decoder.onnx", tmp / "decoder.onnx", keep_io=["inputs_embeds", "logits"])
        graphs["decoder"]["kv"]["dtype"] = "float16"
        graphs["decoder"].update(quantization="fp16")
    elif cfg.precision == "int8":
        files = q.decoder_int8(fp32_dir / "decoder.onnx", tmp / "decoder.onnx")
        graphs["decoder"].update(quantization="dynamic-int8 (MatMul weights per channel)")
    else:
        files = q.decoder_int4(fp32_dir / "decoder.onnx", tmp / "decoder.onnx", cfg.int4_block_size,
                               cfg.int4_accuracy_level)
        graphs["decoder"].update(quantization=f"int4 MatMulNBits (block {cfg.int4_block_size}, symmetric, "
                                              f"accuracy_level {cfg.int4_accuracy_level})")
    graphs["decoder"]["data_files"] = files[1:]
    # Half-precision embeddings: the table is read one row per token, and halves the largest file.
    table = np.load(fp32_dir / "embed_tokens.npy")
    np.save(tmp / "embed_tokens.npy", table.astype(np.float16))
    graphs["embeddings"]["dtype"] = "float16"
    shutil.copyfile(fp32_dir / "tokenizer.json", tmp / "tokenizer.json")
    m["provenance"]["vision_precision"] = vision_precision
    return m


def _finalise(root: Path, manifest: dict) -> dict:
    """Fill the file list (sha256, bytes) for every file the manifest names; write manifest.json."""
    files = {}
    for g in ("vision", "decoder", "embeddings"):
        graph = manifest["graphs"][g]
        for name in [graph["file"], *graph.get("data_files", [])]:
            files[name] = file_entry(root / name)
    files[manifest["tokenizer"]] = file_entry(root / manifest["tokenizer"])
    manifest = dict(manifest, files=files)
    write_manifest(root, manifest)
    return manifest


def _verify(reference, engine_dir: Path, protocol, cfg: ExportConfig):
    from edge_awares.runtimes.onnx import open_engine_session
    from edge_awares.session import Session, SessionConfig
    from edge_awares.tokenizer import TextTokenizer

    scfg = SessionConfig(max_new_tokens=cfg.verify_tokens, max_context=1024 * 8)
    cand = open_engine_session(engine_dir, config=scfg)
    manifest = cand.backend.manifest
    ref = Session(reference, TextTokenizer.from_file(engine_dir / "tokenizer.json"), protocol,
                  manifest.crop_set(), manifest.geometry(), scfg)
    return verify.compare_sessions(ref, cand, max_new_tokens=cfg.verify_tokens)


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
    """sha256 over the checkpoint's files (relative name + content hash), independent of listing order."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + file_entry(f)["sha256"].encode() + b"\n")
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


# -- graph export --------------------------------------------------------------------------------------
def _quiet_export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import torch

    with warnings.catch_warnings():
        # TorchScript tracing warns about Python-int conversions inside the GQA reference forward, which
        # the custom symbolic replaces; the legacy exporter also announces its own deprecation.
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def export_vision(model, path: Path) -> list[str]:
    """Export the vision encoder for any number of images of any size; returns the files written."""
    import onnx
    import torch

    from .graphs import VisionGraph
    from .quantize import save_model

    graph = VisionGraph(model.model.visual).eval()
    vcfg = model.config.vision_config
    unit = int(vcfg.spatial_merge_size)
    # Two images of different shapes so that no size is folded into the trace as a constant.
    grids = [(1, 8 * unit, 10 * unit), (1, 6 * unit, 4 * unit)]
    layout = vision_layout(grids, unit, int(vcfg.window_size), int(vcfg.patch_size))
    n = layout.order.shape[0]
    feats = 3 * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    feeds = layout.inputs(np.random.default_rng(0).standard_normal((n, feats)).astype(np.float32))
    args = tuple(torch.from_numpy(feeds[k]) for k in VISION_INPUTS)
    dyn = {"pixel_values": {0: "patches"}, "rotary_pos": {0: "patches"}, "window_index": {0: "windows", 1: "window_len"},
           "window_back": {0: "patches"}, "image_index": {0: "images", 1: "image_len"}, "image_back": {0: "patches"},
           "merge_order": {0: "tokens"}, VISION_OUTPUT: {0: "tokens"}}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        trace = Path(scratch) / "vision.onnx"
        _quiet_export(graph, args, trace, list(VISION_INPUTS), [VISION_OUTPUT], dyn)
        return save_model(onnx.load(str(trace)), path)


def export_decoder(model, path: Path) -> tuple[list[str], dict]:
    """Export the text decoder with a shared-buffer KV cache; returns (files written, KV layout for the manifest)."""
    import onnx
    import torch

    from .graphs import DecoderGraph
    from .quantize import save_model

    graph = DecoderGraph(model).eval()
    hidden = model.config.get_text_config().hidden_size
    s, cap = 5, 16
    args = (torch.randn(1, s, hidden), torch.arange(s).view(1, 1, s).expand(3, 1, s).contiguous(),
            torch.tensor([s - 1], dtype=torch.int32), torch.tensor(s, dtype=torch.int32),
            *[torch.zeros(1, graph.kv_heads, cap, graph.head_dim) for _ in range(2 * graph.num_layers)])
    dyn = {"inputs_embeds": {1: "sequence"}, "position_ids": {2: "sequence"}}
    past, present = graph.input_names[4:], graph.output_names[1:]
    for name in past + present:
        dyn[name] = {2: "capacity"}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        trace = Path(scratch) / "decoder.onnx"
        _quiet_export(graph, args, trace, graph.input_names, graph.output_names, dyn)
        files = save_model(onnx.load(str(trace)), path)
    kv = {"layout": "BNSH", "shape": ["batch=1", "num_kv_heads", "capacity", "head_dim"], "past": past,
          "present": present, "shared_buffer": True, "dtype": "float32",
          "attention": "com.microsoft.GroupQueryAttention", "length_inputs": ["seqlens_k", "total_sequence_length"]}
    return files, kv


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
