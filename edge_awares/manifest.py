"""The engine manifest: the versioned schema of `manifest.json`, the one contract between export and runtime.

Torch-free. `load_manifest(dir)` validates an engine directory (format, schema version, required fields,
family, protocol and crop set, every listed file present with its size and sha256) and raises a typed
EngineError subclass whose message names the problem. `write_manifest` is the exporter's side.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .crops import CropSet
from .errors import CropError, EngineError, EngineIntegrityError, EngineVersionError, ProtocolError
from .views import Geometry

FORMAT = "edge-awares-engine"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4")

# Required top-level fields and their JSON types (the schema; tests/test_engine_manifest.py exercises it).
_REQUIRED = {
    "format": str, "schema_version": int, "family": str, "precision": str, "model": dict, "protocol": dict,
    "crop_set": dict, "geometry": dict, "special_tokens": dict, "generation": dict, "graphs": dict,
    "files": dict, "tokenizer": str, "provenance": dict, "verification": dict,
}
_GRAPHS = ("vision", "decoder", "embeddings")
_MODEL_KEYS = ("hidden_size", "vocab_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")


@dataclass
class Manifest:
    """A validated manifest and the directory it describes."""

    root: Path
    data: dict

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def model(self) -> dict:
        return self.data["model"]

    def graph(self, name: str) -> dict:
        return self.data["graphs"][name]

    def path(self, name: str) -> Path:
        """Absolute path of graph `name`'s main file."""
        return self.root / self.data["graphs"][name]["file"]

    def crop_set(self) -> CropSet:
        return CropSet.from_dict(self.data["crop_set"])

    def geometry(self) -> Geometry:
        return Geometry.from_dict(self.data["geometry"])

    def protocol(self):
        from .protocols import protocol_from_dict

        return protocol_from_dict(self.data["protocol"])

    def size_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.data["files"].values())


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(root: Path, data: dict) -> Path:
    """Validate `data` (without the file check) and write it as root/manifest.json."""
    validate(data, root)
    out = Path(root) / MANIFEST
    out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return out


def load_manifest(root: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate root/manifest.json; with `check_files`, check every listed file (verify_files).

    Raises EngineError (no manifest, malformed, unknown family/protocol/crop set, missing graph entry),
    EngineVersionError (schema version not readable by this toolkit) or EngineIntegrityError (a listed
    file missing, or its size or sha256 changed).
    """
    root = Path(root)
    if not root.is_dir():
        raise EngineError(f"{root}: no such engine directory")
    mfile = root / MANIFEST
    if not mfile.is_file():
        raise EngineError(f"{root}: not an engine directory (no {MANIFEST}); build one with `edge-awares export`")
    try:
        data = json.loads(mfile.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"{mfile}: unreadable manifest ({e})") from None
    validate(data, root)
    if check_files:
        verify_files(root, data)
    return Manifest(root, data)


def validate(data, root: Path | str = "<engine>") -> None:
    """Structural validation of a manifest dict; raises EngineError/EngineVersionError naming the field."""
    if not isinstance(data, dict):
        raise EngineError(f"{root}: manifest is not a JSON object")
    if data.get("format") != FORMAT:
        raise EngineError(f"{root}: manifest format is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EngineError(f"{root}: manifest schema_version is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise EngineVersionError(f"{root}: engine schema version {version} is newer than this toolkit reads "
                                 f"({SCHEMA_VERSION}); upgrade edge-awares or re-export the engine")
    if version < SCHEMA_VERSION:
        raise EngineVersionError(f"{root}: engine schema version {version} is no longer read (this toolkit "
                                 f"reads {SCHEMA_VERSION}); re-export the engine")
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise EngineError(f"{root}: manifest lacks required field {key!r}")
        if not isinstance(data[key], typ):
            raise EngineError(f"{root}: manifest field {key!r} should be a {typ.__name__}")
    from .models import FAMILIES

    if data["family"] not in FAMILIES:
        raise EngineError(f"{root}: model family {data['family']!r} is not supported; known: {', '.join(FAMILIES)}")
    if data["precision"] not in PRECISIONS:
        raise EngineError(f"{root}: precision {data['precision']!r} unknown; known: {', '.join(PRECISIONS)}")
    for key in _MODEL_KEYS:
        if not isinstance(data["model"].get(key), int):
            raise EngineError(f"{root}: manifest model.{key} is missing or not an integer")
    _check_protocol(data, root)
    try:
        CropSet.from_dict(data["crop_set"])
    except CropError as e:
        raise EngineError(f"{root}: crop set in manifest is invalid ({e})") from None
    try:
        Geometry.from_dict(data["geometry"])
    except (TypeError, ValueError) as e:
        raise EngineError(f"{root}: geometry in manifest is invalid ({e})") from None
    files = data["files"]
    for name, entry in files.items():
        _check_name(name, root)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
            raise EngineError(f"{root}: manifest entry for file {name!r} needs 'sha256' and 'bytes'")
    for g in _GRAPHS:
        graph = data["graphs"].get(g)
        if not isinstance(graph, dict) or not isinstance(graph.get("file"), str):
            raise EngineError(f"{root}: manifest lacks graphs.{g}.file")
        for f in [graph["file"], *graph.get("data_files", [])]:
            if f not in files:
                raise EngineError(f"{root}: graphs.{g} names {f!r}, which the file list does not hold")
    if data["tokenizer"] not in files:
        raise EngineError(f"{root}: the tokenizer file {data['tokenizer']!r} is not in the file list")
    kv = data["graphs"]["decoder"].get("kv")
    if not isinstance(kv, dict) or not {"past", "present", "layout", "dtype"} <= kv.keys():
        raise EngineError(f"{root}: manifest lacks the decoder's KV-cache layout (graphs.decoder.kv)")


def _check_protocol(data: dict, root) -> None:
    from .protocols import PROTOCOLS, protocol_from_dict

    name = data["protocol"].get("name")
    if name not in PROTOCOLS:
        raise EngineError(f"{root}: the engine's protocol {name!r} is unknown to this toolkit; known: "
                          f"{', '.join(PROTOCOLS)}")
    try:
        protocol_from_dict(data["protocol"])
    except (ProtocolError, TypeError) as e:
        raise EngineError(f"{root}: protocol options in manifest are invalid ({e})") from None


def _check_name(name: str, root) -> None:
    """Listed files must stay inside the engine directory."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise EngineError(f"{root}: manifest lists an unsafe file path {name!r}")


def verify_files(root: Path, data: dict, full: bool | None = None) -> None:
    """Every listed file present, a regular file inside the folder, of the listed size and sha256
    (EngineIntegrityError names the first bad one).

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
    for name, entry in data["files"].items():
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise EngineIntegrityError(f"{root}: file {name!r} is a link or not a regular file; engines hold "
                                       "regular files only")
        if not path.is_file():
            raise EngineIntegrityError(f"{root}: file {name!r} listed in the manifest is missing")
        st = path.stat()
        if st.st_size != entry["bytes"]:
            raise EngineIntegrityError(f"{root}: file {name!r} is {st.st_size} bytes, the manifest says {entry['bytes']} "
                                       "(modified or truncated; re-export the engine)")
        stats[name] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    stamp = _stamp_path(root)
    if not full and stamp is not None:
        try:
            if json.loads(stamp.read_text()) == stats:
                return
        except (OSError, ValueError):
            pass
    for name, entry in data["files"].items():
        if sha256_file(root / name) != entry["sha256"]:
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


def _stamp_path(root: Path) -> Path | None:
    """Where the stamp of a full check of `root` (at its current manifest) lives; None if unreadable."""
    try:
        key = hashlib.sha256(str(root.resolve()).encode() + b"\0" + (root / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None
    from .paths import cache_dir

    return cache_dir() / "verified" / f"{key[:32]}.json"
