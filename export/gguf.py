"""Checkpoint -> GGUF files for llama.cpp: the language model and the vision tower (`mmproj`), by llama.cpp's own
converter, then quantized by llama.cpp's own quantizer.

    files = write_gguf(checkpoint, out_dir, "q4_K", log=print)

The converter (`convert_hf_to_gguf.py`, with its `conversion/` package and `gguf-py`) ships in llama.cpp's source,
not in the installed llama-cpp-python package nor in PyPI's `gguf` (../shared/FACTS.md). `converter_dir()` finds
it: EDGE_AWARES_LLAMA_CPP (a llama.cpp source folder), else a copy in the user cache taken from the sdist of the
llama-cpp-python release installed here, so the converter always matches the library that loads its output.
It runs in a subprocess (its own sys.path and logging; its lazy tensors stream the checkpoint tensor by tensor).

Quantization (q8_0, q4_K) goes through `llama_model_quantize` of the installed library, from a float32 GGUF written
beside it (then removed), tensor by tensor from a memory map. The mmproj stays float: f32 for an f32 engine, else
f16 (a q8_0 mmproj does not speed vision up on CPU, FACTS.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edge_awares.errors import BackendUnavailableError, ExportError

CONVERTER = "convert_hf_to_gguf.py"
# What of the llama.cpp source the converter needs (and its licence, which travels with it).
_CONVERTER_PARTS = (CONVERTER, "conversion", "gguf-py", "LICENSE")
# llama.cpp's file types for llama_model_quantize (include/llama.h, enum llama_ftype).
_FTYPES = {"q8_0": 7, "q4_K": 15}  # LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_Q4_K_M
MMPROJ_PRECISION = {"f32": "f32", "f16": "f16", "q8_0": "f16", "q4_K": "f16"}
QUANTIZATION = {
    "f32": "none (float32)",
    "f16": "float16",
    "q8_0": "llama.cpp Q8_0 (blocks of 32, one f16 scale each), quantized from float32",
    "q4_K": "llama.cpp Q4_K_M (k-quants, 256-weight super-blocks; some tensors kept at Q6_K), quantized from float32",
}

# Run the converter as llama.cpp ships it, with one change: a tokenizer trained here has a pre-tokenizer hash that
# the converter's table cannot know. This project's tokenizers use Qwen2's pre-tokenizer (edge_awares/tokenizer.py),
# so an unknown hash is read as "qwen2" (the runtime passes token ids and never uses llama.cpp's tokenizer).
_WRAPPER = r"""
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[2:]
import conversion.base as base
_own = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _own(self, tokenizer)
    except NotImplementedError:
        return "qwen2"
base.TextModel.get_vocab_base_pre = _pre
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def llama_cpp_version() -> str:
    """The installed llama-cpp-python release (BackendUnavailableError if it is not installed)."""
    import importlib.metadata as md

    try:
        return md.version("llama-cpp-python")
    except md.PackageNotFoundError:
        raise BackendUnavailableError("GGUF export and the llama.cpp backend need llama-cpp-python: "
                                      "pip install 'edge-awares[llamacpp]' (README: building it)") from None


def converter_dir(log=print) -> Path:
    """A folder holding llama.cpp's HF->GGUF converter: EDGE_AWARES_LLAMA_CPP, else the user cache's copy for the
    installed llama-cpp-python (fetched once from its sdist with pip, from the package index pip is set up for)."""
    env = os.environ.get("EDGE_AWARES_LLAMA_CPP")
    if env:
        root = Path(env)
        if not (root / CONVERTER).is_file():
            raise BackendUnavailableError(f"EDGE_AWARES_LLAMA_CPP={env} holds no {CONVERTER}; point it at a llama.cpp "
                                          "source folder (or the vendor/llama.cpp folder of a llama-cpp-python sdist)")
        return root
    from edge_awares.paths import cache_dir

    version = llama_cpp_version()
    root = cache_dir() / "llama.cpp-converter" / version
    if (root / CONVERTER).is_file():
        return root
    log(f"fetching llama.cpp's converter from the llama-cpp-python {version} sdist (once, into {root}) ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"llama-cpp-python=={version}", "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if run.returncode != 0 or not sdists:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no sdist"]
            raise BackendUnavailableError(
                f"cannot fetch llama-cpp-python {version}'s sdist for llama.cpp's converter ({tail[0][:200]}); "
                "set EDGE_AWARES_LLAMA_CPP to a llama.cpp source folder instead")
        staged = Path(tmp) / "converter"
        _extract_converter(sdists[0], staged)
        try:
            staged.rename(root)
        except OSError:
            if not (root / CONVERTER).is_file():  # another export placed it meanwhile: use theirs
                raise
    return root


def _extract_converter(sdist: Path, dest: Path) -> None:
    """The converter's parts from the sdist's vendor/llama.cpp, nothing else; members are plain files and folders
    whose paths stay inside `dest`."""
    dest.mkdir()
    with tarfile.open(sdist) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in _CONVERTER_PARTS:
                continue
            if ".." in parts or not (member.isfile() or member.isdir()):
                continue
            target = dest / Path(*parts[3:])
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    if not (dest / CONVERTER).is_file():
        raise BackendUnavailableError(f"{sdist.name} holds no vendor/llama.cpp/{CONVERTER}")


def _convert(src: Path, checkpoint: Path, out: Path, outtype: str, mmproj: bool, log) -> None:
    args = [sys.executable, "-c", _WRAPPER, str(src), str(checkpoint), "--outfile", str(out), "--outtype", outtype]
    if mmproj:
        args.append("--mmproj")
    what = "vision tower (mmproj)" if mmproj else "language model"
    log(f"converting the {what} to GGUF {outtype} with llama.cpp's converter ...")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter's own gguf-py, beside it, not another installed one
    run = subprocess.run(args, capture_output=True, text=True, env=env)
    if run.returncode != 0 or not out.is_file():
        lines = [ln for ln in (run.stderr + run.stdout).strip().splitlines() if ln.strip()]
        raise ExportError(f"llama.cpp's converter failed on the {what} of {checkpoint}: "
                          f"{(lines[-1] if lines else 'no output')[:300]}")


_QUANTIZE = r"""
import sys
from edge_awares.runtimes.llamacpp import import_llama_cpp, quiet_logs
llama_cpp = import_llama_cpp()
quiet_logs(llama_cpp)
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def quantize(src: Path, dst: Path, precision: str, threads: int | None = None) -> None:
    """`src` (a float GGUF) quantized to `precision` by llama.cpp's llama_model_quantize, in a subprocess: llama.cpp's
    quantizer leaves process state behind (its CPU backend crashed the first decode after it in the same process)."""
    run = subprocess.run([sys.executable, "-c", _QUANTIZE, str(src), str(dst), str(_FTYPES[precision]),
                          str(threads or 0)], capture_output=True, text=True)
    if run.returncode != 0 or not dst.is_file():
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        raise ExportError(f"llama.cpp could not quantize {src.name} to {precision} ({tail[0][:300]})")


def write_gguf(checkpoint: Path, out_dir: Path, precision: str, log=print) -> dict:
    """The GGUF backend's files in `out_dir` and its manifest entry (without verification):
    {"precision", "files": {"model", "mmproj"}, "mmproj_precision", "quantization", "converter"}."""
    src = converter_dir(log)
    model = f"model-{precision}.gguf"
    mm_precision = MMPROJ_PRECISION[precision]
    mmproj = f"mmproj-{mm_precision}.gguf"
    if precision in _FTYPES:
        scratch = out_dir / ".model-f32.gguf"
        try:
            _convert(src, checkpoint, scratch, "f32", False, log)
            log(f"quantizing the language model to {precision} with llama.cpp ...")
            quantize(scratch, out_dir / model, precision)
        finally:
            scratch.unlink(missing_ok=True)
    else:
        _convert(src, checkpoint, out_dir / model, precision, False, log)
    _convert(src, checkpoint, out_dir / mmproj, mm_precision, True, log)
    return {"precision": precision, "files": {"model": model, "mmproj": mmproj}, "mmproj_precision": mm_precision,
            "quantization": QUANTIZATION[precision],
            "converter": f"llama.cpp {CONVERTER} (llama-cpp-python {llama_cpp_version()})"}
