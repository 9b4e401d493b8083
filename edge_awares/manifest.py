"""The engine manifest: the versioned schema of `manifest.json`, the one contract between export and runtime.

Torch-free. `load_manifest(dir)` reads manifest.json defensively (a regular file of at most 16 MiB, UTF-8,
strict JSON: no NaN or Infinity, no duplicate keys, bounded nesting), checks its content digest, validates
every field the runtime reads (type and legal range) and every listed file (inside the folder, reached through
no link, of its size and sha256), and raises a typed EngineError subclass whose message names the problem.
`write_manifest` is the exporter's side; every file the runtime opens goes through `Manifest.file`.

Schema 2 is backend-neutral: `backends` maps a backend's name (`onnx`, `gguf`) to what that backend reads (its
precision, its files by role, its graphs' tensor names, its own verification record); everything else (model
shape, tokenizer, protocol, crop set, geometry, special tokens, generation defaults, the file list) is shared.
A folder may hold several backends. A schema-1 manifest (ONNX only, `precision`/`graphs`/`verification` at the
top) still loads: its digest is checked as written, then it is read as the schema-2 `backends.onnx` it means.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .crops import CropSet
from .errors import ConfigError, CropError, EngineError, EngineIntegrityError, EngineVersionError, ProtocolError
from .views import GEOMETRY_LIMITS, Geometry, check_number, show

FORMAT = "edge-awares-engine"
# 2: `backends` (schema 1 had one ONNX backend's precision, graphs and verification at the top; still read).
SCHEMA_VERSION = 2
OLDEST_SCHEMA = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# Each backend's precisions, and the ONNX precision each one matches (the same acceptance gate: export/engine.py
# GATES). llama.cpp's names for its types; q4_K is its k-quant family (Q4_K_M, as llama-quantize recommends).
BACKEND_PRECISIONS = {
    "onnx": {p: p for p in PRECISIONS},
    "gguf": {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_K": "int4"},
}
BACKENDS = tuple(BACKEND_PRECISIONS)
DTYPES = {"float32": 4, "float16": 2}  # tensor dtypes the runtime reads, and their item sizes
KV_LAYOUTS = ("BNSH",)  # [batch, kv_heads, capacity, head_dim]: what runtimes/onnx.py allocates

# Bounds on the file itself: a manifest is ~10 kB; these keep a hostile one from costing memory or a crash.
MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 32  # nesting levels (an exported manifest has 6)
MAX_INT_DIGITS = 18  # every legal integer fits in int64
MAX_FILES = 4096

DIGEST_COVERS = ("every other field: sha256 of json.dumps(manifest without 'digest', sort_keys=True, "
                 "separators=(',', ':'), ensure_ascii=True)")

# Required top-level fields and their JSON types (the schema; tests/test_engine_manifest.py exercises it).
_REQUIRED = {
    "format": str, "schema_version": int, "family": str, "model": dict, "protocol": dict,
    "crop_set": dict, "geometry": dict, "special_tokens": dict, "generation": dict, "backends": dict,
    "files": dict, "tokenizer": str, "provenance": dict,
}
# What schema 1 held at the top and schema 2 holds under backends.onnx.
_V1_ONNX = ("precision", "graphs", "verification")
_GRAPHS = ("vision", "decoder", "embeddings")
_GGUF_FILES = ("model", "mmproj")  # the language model, and the vision tower with its projector
# Legal ranges: past any Qwen2.5-VL (72B: hidden 8192, 80 layers, 64 heads, vocab 152064), short of sizes
# that would make the runtime allocate without bound.
_MODEL_LIMITS = {"hidden_size": (1, 1 << 17), "vocab_size": (1, 1 << 22), "num_layers": (1, 1024),
                 "num_heads": (1, 1024), "num_kv_heads": (1, 1024), "head_dim": (2, 1024)}
_VISION_LIMITS = {"hidden_size": (1, 1 << 16), "num_heads": (1, 256), "depth": (1, 256)}
_FILE_BYTES = (0, 1 << 42)
# Options of the protocols that take any (the protocol classes store them unchecked).
_PROTOCOL_OPTIONS = {"ergo": {"max_tokens": (1, 16384, True), "margin": (0, 1, False)}}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Manifest:
    """A validated manifest and the directory it describes. `backend` is the backend this view reads (None:
    the folder's only one, or the first of BACKENDS it holds); `select` gives the view of another."""

    root: Path
    data: dict
    backend: str | None = None

    def __post_init__(self):
        if self.backend is None:
            self.backend = default_backend(self.data["backends"])

    @property
    def backends(self) -> list[str]:
        """The backends this folder holds, in BACKENDS order."""
        return [b for b in BACKENDS if b in self.data["backends"]]

    def select(self, backend: str | None) -> "Manifest":
        """This manifest read for `backend` (None: the default); EngineError if the folder does not hold it."""
        if backend is None:
            return self
        if backend not in self.data["backends"]:
            raise EngineError(f"{self.root}: this engine holds no {show(backend)} backend; it holds "
                              f"{', '.join(self.backends)}")
        return Manifest(self.root, self.data, backend)

    @property
    def entry(self) -> dict:
        """The selected backend's own fields (backends.NAME)."""
        return self.data["backends"][self.backend]

    @property
    def precision(self) -> str:
        return self.entry["precision"]

    @property
    def verification(self) -> dict:
        return self.entry.get("verification", {})

    @property
    def model(self) -> dict:
        return self.data["model"]

    def graph(self, name: str) -> dict:
        """ONNX graph `name`'s entry (backends.onnx.graphs.NAME)."""
        return self.data["backends"]["onnx"]["graphs"][name]

    def file(self, name: str) -> Path:
        """The path of listed file `name`, checked to be a regular file inside the engine folder reached
        through no symbolic link (EngineIntegrityError otherwise). Every file the runtime opens comes from
        here, so a folder changed after loading (or loaded with check_files=False) cannot reach outside."""
        if name not in self.data["files"]:
            raise EngineError(f"{self.root}: {show(name)} is not a file this engine's manifest lists")
        return _inside(self.root, name)[0]

    def path(self, name: str) -> Path:
        """Absolute path of graph `name`'s main file (checked as `file`)."""
        return self.file(self.graph(name)["file"])

    def graph_files(self, name: str) -> list[Path]:
        """Graph `name`'s main file, then its external-data files (onnxruntime opens those itself, next to the
        main file), every one checked as `file`."""
        graph = self.graph(name)
        return [self.file(f) for f in [graph["file"], *graph.get("data_files", [])]]

    def backend_files(self, backend: str | None = None) -> list[str]:
        """The listed files `backend` (None: the selected one) reads, the shared tokenizer included."""
        b = backend or self.backend
        entry = self.data["backends"][b]
        if b == "onnx":
            names = [f for g in _GRAPHS for f in (entry["graphs"][g]["file"], *entry["graphs"][g].get("data_files", []))]
        else:
            names = [entry["files"][role] for role in _GGUF_FILES]
        return list(dict.fromkeys(names + [self.data["tokenizer"]]))

    def tokenizer_path(self) -> Path:
        return self.file(self.data["tokenizer"])

    def crop_set(self) -> CropSet:
        return CropSet.from_dict(self.data["crop_set"])

    def geometry(self) -> Geometry:
        return Geometry.from_dict(self.data["geometry"])

    def protocol(self):
        from .protocols import protocol_from_dict

        return protocol_from_dict(self.data["protocol"])

    def verify(self, full: bool | None = None) -> None:
        """verify_files over the selected backend's files."""
        verify_files(self.root, self.data, full=full, names=self.backend_files())

    def size_bytes(self) -> int:
        """Bytes of the selected backend's files (what it maps or loads)."""
        return sum(int(self.data["files"][f]["bytes"]) for f in self.backend_files())


def default_backend(backends: dict) -> str:
    """The backend an engine runs on when none is asked for: the first of BACKENDS it holds."""
    for b in BACKENDS:
        if b in backends:
            return b
    raise EngineError(f"manifest names no backend this toolkit runs; known: {', '.join(BACKENDS)}")


def upgrade(data: dict) -> dict:
    """A schema-1 manifest as the schema-2 one it means (its ONNX fields moved under backends.onnx); a schema-2
    one unchanged. Run after the digest check (the digest covers the manifest as written)."""
    if data.get("schema_version") != 1:
        return data
    out = {k: v for k, v in data.items() if k not in _V1_ONNX}
    onnx = {k: data[k] for k in _V1_ONNX if k in data}
    out["backends"] = {"onnx": onnx}
    out["schema_version"] = SCHEMA_VERSION
    return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


# -- the digest ---------------------------------------------------------------------------------------

def canonical(data: dict) -> bytes:
    """The bytes the digest covers: `data` without its "digest" field, as sorted, compact, ASCII JSON (so the
    manifest's layout on disk may change, its content may not)."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def manifest_digest(data: dict) -> str:
    return hashlib.sha256(canonical(data)).hexdigest()


def seal(data: dict) -> dict:
    """A copy of `data` with its "digest" field (re)computed. The exporter seals through `write_manifest`;
    tests that alter a manifest on purpose re-seal it so that the check they aim at is the one that fires.

    The digest is a checksum, not a signature: it makes any edit after export (a geometry, a token id, a
    file's sha256) fail loudly, and it cannot stop someone who re-seals on purpose."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return {**body, "digest": {"sha256": manifest_digest(body), "covers": DIGEST_COVERS}}


def check_digest(data: dict, root: Path | str = "<engine>") -> None:
    """EngineIntegrityError unless `data` carries the digest of its own content."""
    d = data.get("digest")
    if d is None:
        raise EngineIntegrityError(f"{root}: {MANIFEST} carries no digest (exported by an older edge-awares, or the "
                                   "field was removed); re-export the engine")
    if (not isinstance(d, dict) or d.get("covers") != DIGEST_COVERS or not isinstance(d.get("sha256"), str)
            or not _SHA256.fullmatch(d["sha256"])):
        raise EngineIntegrityError(f"{root}: manifest field digest = {show(d)} is malformed; legal: "
                                   "{'sha256': 64 hex digits, 'covers': ...} as `edge-awares export` writes it")
    if not hmac.compare_digest(d["sha256"], manifest_digest(data)):
        raise EngineIntegrityError(f"{root}: {MANIFEST} was edited after export (its digest does not match); re-export")


# -- writing and reading ------------------------------------------------------------------------------

def write_manifest(root: Path, data: dict) -> Path:
    """Validate `data` (without the file check), seal it with its digest and write it as root/manifest.json,
    through a temporary file so that no reader sees half of one. `data` itself is left unchanged."""
    validate(data, root)
    out = Path(root) / MANIFEST
    text = json.dumps(seal(data), indent=1, sort_keys=False, allow_nan=False) + "\n"
    tmp = out.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def load_manifest(root: str | Path, check_files: bool = True, backend: str | None = None) -> Manifest:
    """Read and validate root/manifest.json, as read by `backend` (None: the folder's default); with
    `check_files`, check every file that backend reads (verify_files).

    Raises EngineError (no manifest, unreadable or hostile JSON, a field missing, of the wrong type or out of
    its legal range, unknown family/protocol/crop set), EngineVersionError (schema version not readable by
    this toolkit) or EngineIntegrityError (manifest.json a link, edited after export or without a digest; a
    listed file missing, outside the folder, behind a link, or of another size or sha256).
    """
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"{root}: no such engine directory")
    data = parse_manifest(_read_manifest(root), root / MANIFEST)
    _check_header(data, root)  # a newer format may seal differently: its version error comes first
    check_digest(data, root)
    data = upgrade(data)
    validate(data, root)
    manifest = Manifest(root, data).select(backend)
    if check_files:
        manifest.verify()
    return manifest


def _read_manifest(root: Path) -> bytes:
    mfile = root / MANIFEST
    try:
        st = os.lstat(mfile)
    except (FileNotFoundError, NotADirectoryError):
        raise EngineError(f"{root}: not an engine directory (no {MANIFEST}); build one with `edge-awares export`") from None
    except OSError as e:
        raise EngineError(f"{mfile}: unreadable manifest ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):  # nothing about its target is read or printed
        raise EngineIntegrityError(f"{root}: {MANIFEST} is a symbolic link; an engine's manifest must be a regular "
                                   "file in its folder")
    if not stat.S_ISREG(st.st_mode):
        raise EngineError(f"{root}: {MANIFEST} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise EngineError(f"{mfile}: the manifest is {st.st_size} bytes; legal: at most {MAX_MANIFEST_BYTES} (16 MiB)")
    # O_NOFOLLOW and a bounded read: the file may have been swapped or grown since the lstat.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(mfile, flags)
    except OSError as e:
        raise EngineError(f"{mfile}: unreadable manifest ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise EngineError(f"{root}: {MANIFEST} is not a regular file")
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise EngineError(f"{mfile}: the manifest is over {MAX_MANIFEST_BYTES} bytes (16 MiB), the legal most")
    return raw


class _Refused(ValueError):
    """JSON that parses but that a manifest may not hold."""


def _no_constant(name: str):
    raise _Refused(f"{name} is not a number a manifest may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {show(text)} overflows a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text)} digits (a manifest's integers have at most {MAX_INT_DIGITS})")
    return int(text)


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {show(key)} appears twice in one object")
        out[key] = value
    return out


def parse_manifest(raw: bytes, where: Path | str = MANIFEST):
    """Strict JSON from `raw`: UTF-8; no NaN, Infinity or overflowing numbers (Python's json takes them);
    no duplicate keys (json keeps the last one silently); integers of at most 18 digits. EngineError, one line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineError(f"{where}: unreadable manifest (not UTF-8 text: bad byte at offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int,
                          object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise EngineError(f"{where}: unreadable manifest (nested too deeply; legal: {MAX_DEPTH} levels)") from None
    except ValueError as e:  # JSONDecodeError and _Refused
        raise EngineError(f"{where}: unreadable manifest ({str(e)[:200]})") from None


# -- validation ---------------------------------------------------------------------------------------

def _check_header(data, root) -> None:
    """A JSON tree of bounded depth and finite numbers, of our format and schema version."""
    if not isinstance(data, dict):
        raise EngineError(f"{root}: manifest is not a JSON object")
    _check_tree(data, root)
    if data.get("format") != FORMAT:
        raise EngineError(f"{root}: manifest format is {show(data.get('format'))}, expected {FORMAT!r}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EngineError(f"{root}: manifest schema_version is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise EngineVersionError(f"{root}: engine schema version {version} is newer than this toolkit reads "
                                 f"({SCHEMA_VERSION}); upgrade edge-awares or re-export the engine")
    if version < OLDEST_SCHEMA:
        raise EngineVersionError(f"{root}: engine schema version {version} is no longer read (this toolkit "
                                 f"reads {OLDEST_SCHEMA}..{SCHEMA_VERSION}); re-export the engine")


def _check_tree(data: dict, root) -> None:
    """Iteratively (a deep tree must not overflow the stack here either): depth, key and value types."""
    def where(link) -> str:
        parts = []
        while link is not None:
            link, key = link
            parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        return show("".join(reversed(parts)).lstrip("."), 80).strip("'\"")

    stack = [(data, 1, None)]
    while stack:
        value, depth, link = stack.pop()
        if depth > MAX_DEPTH:
            raise EngineError(f"{root}: manifest nests deeper than {MAX_DEPTH} levels (at {where(link)})")
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise EngineError(f"{root}: manifest field {where(link)} has a non-string key {show(k)}")
                stack.append((v, depth + 1, (link, k)))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1, (link, i)) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise EngineError(f"{root}: manifest field {where(link)} = {value} is not a finite number")
        elif value is not None and not isinstance(value, (str, int)):
            raise EngineError(f"{root}: manifest field {where(link)} holds a {type(value).__name__}, not JSON")


class _Fields:
    """Typed, range-checked reads of a manifest's fields; every failure an EngineError naming the field.
    An optional field may be absent, never null: the runtime reads whatever is there."""

    def __init__(self, root):
        self.root = root

    def fail(self, msg: str):
        raise EngineError(f"{self.root}: {msg}")

    def _absent(self, d: dict, key: str, path: str, what: str, required: bool) -> bool:
        if key in d:
            return False
        if required:
            self.fail(f"manifest lacks field {path} ({what})")
        return True

    def value(self, path: str, value, lo, hi, integer: bool = True):
        try:
            return check_number(path, value, lo, hi, integer=integer)
        except ConfigError as e:
            self.fail(f"manifest field {e}")

    def number(self, d: dict, key: str, path: str, lo, hi, required: bool = True, integer: bool = True):
        if self._absent(d, key, path, f"{'an integer' if integer else 'a number'}, {lo}..{hi}", required):
            return None
        return self.value(path, d[key], lo, hi, integer)

    def string(self, d: dict, key: str, path: str, required: bool = True, choices=None) -> str | None:
        if self._absent(d, key, path, "a string", required):
            return None
        value = d[key]
        if not isinstance(value, str) or (choices and value not in choices):
            legal = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
            self.fail(f"manifest field {path} = {show(value)} is not {'one the runtime reads' if choices else 'a string'}"
                      f"; legal: {legal}")
        return value

    def strings(self, d: dict, key: str, path: str, required: bool = True, limit: int = 4096) -> list | None:
        if self._absent(d, key, path, "a list of names", required):
            return None
        value = d[key]
        if (not isinstance(value, list) or len(value) > limit
                or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)):
            self.fail(f"manifest field {path} = {show(value)} is not a list of names; legal: up to {limit} "
                      "non-empty strings of at most 256 characters")
        if len(set(value)) != len(value):
            self.fail(f"manifest field {path} names one entry twice")
        return value

    def obj(self, d: dict, key: str, path: str, required: bool = True) -> dict | None:
        if self._absent(d, key, path, "an object", required):
            return None
        if not isinstance(d[key], dict):
            self.fail(f"manifest field {path} = {show(d[key])} is not an object")
        return d[key]

    def flag(self, d: dict, key: str, path: str) -> None:
        if key in d and not isinstance(d[key], bool):
            self.fail(f"manifest field {path} = {show(d[key])} is not true or false")

    def equal(self, path: str, value, other: str, expected, why: str) -> None:
        if value != expected:
            self.fail(f"manifest field {path} = {show(value)} differs from {other} = {show(expected)}; {why}")


def validate(data, root: Path | str = "<engine>") -> None:
    """Structural validation of a manifest dict: every field the runtime reads present, of its type and in
    its legal range ("manifest field geometry.patch_size = 0 is out of range; legal: 1..64"), and
    consistent with the others. Raises EngineError / EngineVersionError. The digest is `check_digest`'s."""
    _check_header(data, root)
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise EngineError(f"{root}: manifest lacks required field {key!r}")
        if not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
            raise EngineError(f"{root}: manifest field {key!r} should be a {typ.__name__}")
    from .models import FAMILIES

    if data["family"] not in FAMILIES:
        raise EngineError(f"{root}: model family {show(data['family'])} is not supported; known: {', '.join(FAMILIES)}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise EngineError(f"{root}: manifest schema_version {data['schema_version']} is not {SCHEMA_VERSION} "
                          "(a schema-1 manifest is read through manifest.upgrade)")
    c = _Fields(root)
    model = _check_model(data["model"], c)
    geometry = _check_geometry(data["geometry"], c)
    _check_vision(data["model"], geometry, c)
    _check_protocol(data, geometry, root)
    _check_crop_set(data["crop_set"], root)
    _check_tokens(data, model["vocab_size"], c)
    files = _check_files(data["files"], c)
    _check_backends(data["backends"], model, files, c)
    if data["tokenizer"] not in files:
        raise EngineError(f"{root}: the tokenizer file {show(data['tokenizer'])} is not in the file list")
    c.obj(data, "sizes", "sizes", required=False)


def _check_model(model: dict, c: _Fields) -> dict:
    out = {key: c.number(model, key, f"model.{key}", lo, hi) for key, (lo, hi) in _MODEL_LIMITS.items()}
    heads, kv = out["num_heads"], out["num_kv_heads"]
    if heads % kv:
        c.fail(f"manifest field model.num_kv_heads = {kv} does not divide model.num_heads = {heads}; legal: a "
               "divisor of num_heads (grouped-query attention)")
    if out["head_dim"] % 2:
        c.fail(f"manifest field model.head_dim = {out['head_dim']} is odd; legal: an even number 2..1024 "
               "(rotary embeddings pair its halves)")
    c.number(model, "parameters", "model.parameters", 0, 1 << 40, required=False)
    c.flag(model, "tied_embeddings", "model.tied_embeddings")
    return out


def _check_geometry(d: dict, c: _Fields) -> Geometry:
    for key in Geometry.__dataclass_fields__:  # an exported manifest holds them all: no silent defaults
        if key not in d:
            c.fail(f"manifest lacks field geometry.{key} (an export writes every field of the view geometry)")
    try:
        return Geometry.from_dict(d)
    except ConfigError as e:
        c.fail(f"manifest field {e}")


def _check_vision(model: dict, g: Geometry, c: _Fields) -> None:
    """model.vision: what the runtime reads to lay out and budget the vision graph, consistent with the
    geometry the views are cut with (the graph was built for one patch grid)."""
    vis = c.obj(model, "vision", "model.vision")
    p = "model.vision."
    for key, (lo, hi) in _VISION_LIMITS.items():
        c.number(vis, key, p + key, lo, hi, required=key != "depth")
    if vis["hidden_size"] % vis["num_heads"]:
        c.fail(f"manifest field {p}num_heads = {vis['num_heads']} does not divide {p}hidden_size = "
               f"{vis['hidden_size']}; legal: a divisor of hidden_size")
    why = "the vision graph and the views must share one patch grid"
    for key in ("patch_size", "merge_size", "temporal_patch_size"):
        lo, hi = GEOMETRY_LIMITS[key]
        value = c.number(vis, key, p + key, lo, hi, required=key != "temporal_patch_size")
        if value is not None:
            c.equal(p + key, value, f"geometry.{key}", getattr(g, key), why)
    window = c.number(vis, "window_size", p + "window_size", g.factor, 4096)
    if window % g.factor:
        c.fail(f"manifest field {p}window_size = {window} is not a multiple of patch_size x merge_size = {g.factor}")
    c.equal(p + "window_patches", c.number(vis, "window_patches", p + "window_patches", 1, 1 << 20),
            f"({p}window_size / patch_size)^2", (window // g.patch_size) ** 2, "the window layout depends on it")
    c.equal(p + "in_features", c.number(vis, "in_features", p + "in_features", 1, 1 << 20),
            "3 x temporal_patch_size x patch_size^2", 3 * g.temporal_patch_size * g.patch_size ** 2,
            "the views are patchified to that width")
    out = c.number(vis, "out_hidden_size", p + "out_hidden_size", 1, 1 << 17, required=False)
    if out is not None:
        c.equal(p + "out_hidden_size", out, "model.hidden_size", model["hidden_size"],
                "image embeddings enter the decoder")
    full = vis.get("fullatt_block_indexes")
    if full is not None:
        depth = vis.get("depth", _VISION_LIMITS["depth"][1])
        if not isinstance(full, list) or len(full) > depth:
            c.fail(f"manifest field {p}fullatt_block_indexes = {show(full)} is not a list of block indexes")
        for i, b in enumerate(full):
            c.value(f"{p}fullatt_block_indexes[{i}]", b, 0, depth - 1)


def _check_protocol(data: dict, g: Geometry, root) -> None:
    from .protocols import PROTOCOLS, protocol_from_dict

    name = data["protocol"].get("name")
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise EngineError(f"{root}: the engine's protocol {show(name)} is unknown to this toolkit; known: "
                          f"{', '.join(PROTOCOLS)}")
    c = _Fields(root)
    for key, (lo, hi, integer) in _PROTOCOL_OPTIONS.get(name, {}).items():
        c.number(data["protocol"], key, f"protocol.{key}", lo, hi, required=False, integer=integer)
    try:
        protocol_from_dict(data["protocol"]).geometry(g).check()  # e.g. ergo's token cap applied to the views
    except (ProtocolError, TypeError) as e:
        raise EngineError(f"{root}: protocol options in manifest are invalid ({str(e)[:200]})") from None
    except ConfigError as e:
        raise EngineError(f"{root}: the {name} protocol's view geometry is invalid ({e})") from None


def _check_crop_set(d: dict, root) -> None:
    def bad(why: str):
        raise EngineError(f"{root}: crop set in manifest is invalid ({why})")

    if not isinstance(d.get("name"), str) or not d["name"]:
        bad(f"crop_set.name = {show(d.get('name'))} is not a name")
    if "min_side" in d:
        try:
            check_number("crop_set.min_side", d["min_side"], 1, 1 << 16)
        except ConfigError as e:
            bad(str(e))
    crops = d.get("crops")
    if not isinstance(crops, list) or len(crops) > 256:
        bad(f"crop_set.crops = {show(crops)} is not a list of at most 256 crops")
    for i, crop in enumerate(crops):
        if not isinstance(crop, dict):
            bad(f"crop_set.crops[{i}] = {show(crop)} is not an object")
        for key in ("id", "name"):
            if not isinstance(crop.get(key), str) or not 0 < len(crop[key]) <= 64:
                bad(f"crop_set.crops[{i}].{key} = {show(crop.get(key))} is not a string of 1..64 characters")
        box = crop.get("box")
        if not isinstance(box, list) or len(box) != 4:
            bad(f"crop_set.crops[{i}].box = {show(box)} is not 4 numbers")
        for j, v in enumerate(box):
            try:
                check_number(f"crop_set.crops[{i}].box[{j}]", v, 0, 1, integer=False)
            except ConfigError as e:
                bad(str(e))
    try:
        CropSet.from_dict(d)
    except CropError as e:
        bad(str(e))


def _check_tokens(data: dict, vocab: int, c: _Fields) -> None:
    tokens = data["special_tokens"]
    if len(tokens) > 4096:
        c.fail(f"manifest field special_tokens holds {len(tokens)} tokens; legal: at most 4096")
    for name in tokens:
        if not 0 < len(name) <= 256:
            c.fail(f"manifest field special_tokens has a key of {len(name)} characters; legal: 1..256")
        c.number(tokens, name, f"special_tokens[{show(name)}]", 0, vocab - 1)
    gen = data["generation"]
    from .ranges import LIMITS  # the flags' own ranges: one table for every place a limit is set

    for key, (lo, hi) in LIMITS.items():
        c.number(gen, key, f"generation.{key}", lo, hi, required=False)
    c.number(gen, "temperature", "generation.temperature", 0, 100, required=False, integer=False)
    for t in c.strings(gen, "stop_tokens", "generation.stop_tokens", required=False) or []:
        if t not in tokens:
            c.fail(f"manifest field generation.stop_tokens names {show(t)}, which special_tokens does not hold")


def _check_files(files: dict, c: _Fields) -> dict:
    if len(files) > MAX_FILES:
        c.fail(f"manifest lists {len(files)} files; legal: at most {MAX_FILES}")
    for name, entry in files.items():
        _check_name(name, c.root)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and "bytes" in entry):
            c.fail(f"manifest entry for file {show(name)} needs 'sha256' and 'bytes'")
        if not _SHA256.fullmatch(entry["sha256"]):
            c.fail(f"manifest field files[{show(name)}].sha256 = {show(entry['sha256'])} is not a sha256; legal: "
                   "64 lowercase hex digits")
        c.number(entry, "bytes", f"files[{show(name)}].bytes", *_FILE_BYTES)
    return files


def _check_backends(backends: dict, model: dict, files: dict, c: _Fields) -> None:
    """Each backend named is one this toolkit runs, with a precision of its own and every file it reads listed."""
    if not backends:
        c.fail(f"manifest field backends is empty; legal: one or more of {', '.join(BACKENDS)}")
    for name, entry in backends.items():
        if name not in BACKENDS:
            c.fail(f"manifest names backend {show(name)}, which this toolkit does not run; known: {', '.join(BACKENDS)}")
        if not isinstance(entry, dict):
            c.fail(f"manifest field backends.{name} is not an object")
        c.string(entry, "precision", f"backends.{name}.precision", choices=tuple(BACKEND_PRECISIONS[name]))
        c.obj(entry, "verification", f"backends.{name}.verification", required=False)
        if name == "onnx":
            graphs = c.obj(entry, "graphs", "backends.onnx.graphs")
            _check_graphs(graphs, model, files, c)
        else:
            roles = c.obj(entry, "files", f"backends.{name}.files")
            for role in _GGUF_FILES:
                f = c.string(roles, role, f"backends.{name}.files.{role}")
                if f not in files:
                    c.fail(f"backends.{name}.files.{role} names {show(f)}, which the file list does not hold")
            c.string(entry, "mmproj_precision", f"backends.{name}.mmproj_precision", required=False,
                     choices=("f32", "f16", "q8_0"))


def _check_graphs(graphs: dict, model: dict, files: dict, c: _Fields) -> None:
    for g in _GRAPHS:
        graph = graphs.get(g)
        if not isinstance(graph, dict) or not isinstance(graph.get("file"), str):
            c.fail(f"manifest lacks backends.onnx.graphs.{g}.file")
        data_files = c.strings(graph, "data_files", f"backends.onnx.graphs.{g}.data_files", required=False, limit=MAX_FILES) or []
        for f in [graph["file"], *data_files]:
            if f not in files:
                c.fail(f"backends.onnx.graphs.{g} names {show(f)}, which the file list does not hold")
        for key in ("inputs", "outputs"):
            c.strings(graph, key, f"backends.onnx.graphs.{g}.{key}", required=False)
        for key in ("quantization", "layout", "logits"):
            c.string(graph, key, f"backends.onnx.graphs.{g}.{key}", required=False)
    dec = graphs["decoder"]
    kv = dec.get("kv")
    if not isinstance(kv, dict) or not {"past", "present", "layout", "dtype"} <= kv.keys():
        c.fail("manifest lacks the decoder's KV-cache layout (backends.onnx.graphs.decoder.kv)")
    p = "backends.onnx.graphs.decoder.kv."
    for key in ("past", "present"):
        names = c.strings(kv, key, p + key)
        if len(names) != 2 * model["num_layers"]:
            c.fail(f"manifest field {p}{key} holds {len(names)} names; legal: 2 x model.num_layers = "
                   f"{2 * model['num_layers']} (a key and a value per layer)")
    c.string(kv, "layout", p + "layout", choices=KV_LAYOUTS)
    c.string(kv, "dtype", p + "dtype", choices=tuple(DTYPES))
    c.strings(kv, "shape", p + "shape", required=False)
    c.strings(kv, "length_inputs", p + "length_inputs", required=False)
    c.string(kv, "attention", p + "attention", required=False)
    c.flag(kv, "shared_buffer", p + "shared_buffer")
    c.string(dec, "embeds_dtype", "backends.onnx.graphs.decoder.embeds_dtype", required=False, choices=tuple(DTYPES))
    # The token table: [vocab, hidden] of one dtype, an .npy file or a block at `offset` inside another file.
    emb = graphs["embeddings"]
    p = "backends.onnx.graphs.embeddings."
    dtype = c.string(emb, "dtype", p + "dtype", choices=tuple(DTYPES))
    shape = emb.get("shape")
    expected = [model["vocab_size"], model["hidden_size"]]
    if not isinstance(shape, (list, tuple)) or list(shape) != expected or not all(type(d) is int for d in shape):
        c.fail(f"manifest field {p}shape = {show(shape)} is not [model.vocab_size, model.hidden_size] = {expected}")
    size = files[emb["file"]]["bytes"]
    offset = c.number(emb, "offset", p + "offset", 0, size, required=False) or 0
    need = expected[0] * expected[1] * DTYPES[dtype]
    if offset + need > size:
        c.fail(f"manifest field {p}offset = {offset}: a {expected} {dtype} table there needs {offset + need} bytes; "
               f"legal: a table inside its file ({size} bytes)")


def _check_name(name, root) -> None:
    """Listed files must stay inside the engine directory: relative POSIX paths in their plain form."""
    ok = isinstance(name, str) and 0 < len(name) <= 1024 and "\0" not in name and "\\" not in name
    if ok:
        p = PurePosixPath(name)
        ok = (not p.is_absolute() and ".." not in p.parts and str(p) == name and p.parts != ()
              and all(len(part) <= 255 for part in p.parts) and name != MANIFEST)
    if not ok:
        raise EngineError(f"{root}: manifest lists an unsafe file path {show(name)}")


# -- the files ----------------------------------------------------------------------------------------

def _inside(root: Path, name: str) -> tuple[Path, os.stat_result]:
    """root/name and its lstat, if every component below root is a real directory (or, last, a regular file),
    none a symbolic link, and the whole resolves inside root. EngineIntegrityError otherwise; the message
    names the listed path only, never a property of what a link points at."""
    root = Path(root)
    parts = PurePosixPath(name).parts
    path = root
    for i, part in enumerate(parts):
        path = path / part
        sub = "/".join(parts[: i + 1])
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise EngineIntegrityError(f"{root}: file {name!r} listed in the manifest is missing") from None
        except OSError as e:
            raise EngineIntegrityError(f"{root}: file {name!r} cannot be read ({e.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            via = "is a symbolic link" if sub == name else f"is reached through a symbolic link ({sub!r})"
            raise EngineIntegrityError(f"{root}: file {name!r} {via}; engines hold regular files only, inside "
                                       "their folder")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            raise EngineIntegrityError(f"{root}: file {name!r} listed in the manifest is missing ({sub!r} is not "
                                       "a folder)")
        if last and not stat.S_ISREG(st.st_mode):
            raise EngineIntegrityError(f"{root}: file {name!r} is not a regular file; engines hold regular files only")
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except OSError:
        inside = False
    if not inside:
        raise EngineIntegrityError(f"{root}: file {name!r} resolves outside the engine folder")
    return path, st


def verify_files(root: Path, data: dict, full: bool | None = None, names: list[str] | None = None) -> None:
    """Every listed file (or those of `names`: one backend's) present, a regular file inside the folder reached through no link (`_inside`), of
    the listed size and sha256 (EngineIntegrityError names the first bad one).

    Hashing a multi-GB engine takes a minute (~4.5 s/GB on 2 cores), so a full check is remembered: after
    one, a stamp of each file's (device, inode, size, mtime, ctime) is kept in the user cache, keyed by the
    folder and the manifest's bytes, and later loads compare stats only. Any write, truncation, rename over
    or copy onto a file changes its size, inode or ctime (which no user call can set back), so the cheap check
    still catches every change made through the filesystem; it cannot see bytes changed beneath it (a raw
    block device, a filesystem that does not keep ctime). `full=True` (or EDGE_AWARES_VERIFY=full) hashes
    every file every time.
    """
    root = Path(root)
    if full is None:
        full = os.environ.get("EDGE_AWARES_VERIFY", "").lower() == "full"
    stats = {}
    paths = {}
    # Every listed file is checked in place (inside the folder, through no link, of its size): cheap. Only those
    # of `names` (the backend that will read them) are hashed.
    for name, entry in data["files"].items():
        path, st = _inside(root, name)
        if st.st_size != entry["bytes"]:
            raise EngineIntegrityError(f"{root}: file {name!r} is {st.st_size} bytes, the manifest says {entry['bytes']} "
                                       "(modified or truncated; re-export the engine)")
        stats[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        paths[name] = path
    listed = data["files"] if names is None else {n: data["files"][n] for n in names}
    stats = {n: stats[n] for n in listed}
    stamp = _stamp_path(root, sorted(listed))
    if not full and stamp is not None:
        try:
            if json.loads(stamp.read_text()) == stats:
                return
        except (OSError, ValueError):
            pass
    for name, entry in listed.items():
        if sha256_file(paths[name]) != entry["sha256"]:
            raise EngineIntegrityError(f"{root}: file {name!r} does not match its sha256 in the manifest "
                                       "(modified or corrupt; re-export the engine)")
    if stamp is not None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
            tmp.write_text(json.dumps(stats))
            tmp.replace(stamp)
        except OSError:
            pass  # a read-only cache only means hashing again next time


def _stamp_path(root: Path, names: list[str]) -> Path | None:
    """Where the stamp of a full check of `names` in `root` (at its current manifest) lives; None if unreadable."""
    try:
        key = hashlib.sha256(str(root.resolve()).encode() + b"\0" + (root / MANIFEST).read_bytes() + b"\0"
                             + "\0".join(names).encode()).hexdigest()
    except OSError:
        return None
    from .paths import cache_dir

    return cache_dir() / "verified" / f"{key[:32]}.json"
