"""Output safety: the one place that decides where the toolkit may write, and what it may replace or delete.

Folders: `prepare_dir` validates an output before any work; `building` writes it as a hidden partial sibling that
records its owner and renames it into place whole, replacing (with --force) only a folder that is recognisably
ours of the same kind (`is_ours`: the `.edge-awares.json` marker, or what older versions left), never an input and
never through a symbolic link. Partials of runs that died on this host are removed on the next run into the same
place (`clean_stale_partials`). Files: `write_file_atomic` / `open_output` write beside the target and rename, and
replace only a file we wrote (a producer mark per kind). Torch-free; PIL loads only for PNG files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .errors import OutputError

PRODUCER = "edge-awares"
MARKER = ".edge-awares.json"
# Folder kinds and how an error message names them.
DIR_KINDS = {"engine": "an edge-awares engine", "checkpoint": "a checkpoint edge-awares wrote",
             "run": "an edge-awares training run", "dataset": "an edge-awares dataset",
             "demo": "an edge-awares demo run"}
# File kinds and their producer mark: trace JSON otherData.producer; PNG tEXt Software; JSON top-level "producer";
# JSONL a "producer" field in each record (read from the first); trajectories (a training-data format others read
# too, so no extra field) the full set of keys write_trajectories writes.
FILE_KINDS = {"trace": "a trace edge-awares wrote", "png": "an image edge-awares wrote",
              "json": "a report edge-awares wrote", "jsonl": "records edge-awares wrote",
              "trajectories": "trajectories edge-awares wrote"}
_TRAJECTORY_KEYS = frozenset({"id", "image", "question", "answers", "label", "crop_ids", "messages"})
# The keys every `eval --out` record had before records carried a producer field.
_EVAL_RECORD_KEYS = frozenset({"id", "prediction", "score", "rtr", "visual_tokens", "crops", "requested",
                               "parse_failures", "gold_crops"})


# ---------------------------------------------------------------------------------------------- ownership
def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of `folder` (a dict), or None when it has none or an unreadable one."""
    d = _read_json(Path(folder) / MARKER)
    return d if isinstance(d, dict) and d.get("producer") == PRODUCER else None


def write_marker(folder: str | os.PathLike, kind: str, owner: bool = False) -> Path:
    """Write (atomically) the marker saying `folder` is an output of `kind`; `owner` adds this process as the
    owner of a partial folder (what clean_stale_partials reads). Keeps the first `created` time."""
    from . import __version__

    if kind not in DIR_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; legal: {', '.join(DIR_KINDS)}")
    path = Path(folder) / MARKER
    old = read_marker(folder) or {}
    data = {"producer": PRODUCER, "kind": kind, "version": __version__,
            "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if owner:
        data["owner"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                         "proc_start": _proc_start(os.getpid())}
    tmp = path.with_name(f"{MARKER}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def ensure_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark `folder` (which must be ours or new) as `kind` unless it already carries a marker."""
    if read_marker(folder) is None:
        try:
            write_marker(folder, kind)
        except OSError as e:
            raise output_error(folder, e) from None


def is_ours(folder: str | os.PathLike, kind: str) -> bool:
    """Whether `folder` is recognisably an output of `kind` this toolkit wrote.

    The marker decides when present (its kind must match). Folders from before the marker:
    engine: manifest.json with format "edge-awares-engine"; checkpoint: edge_awares_tiny.json (tiny, bigckpt,
    train base), edge_awares_policy.json with its stages (train sft/grpo), or a run/ folder of ours (a training
    run stopped before its merge); run: config.json holding the run's config and resolved settings (RunLog);
    dataset: samples.jsonl whose first sample came from our generators, or curate's config.json; demo:
    demo_run.json with config and stages.
    """
    p = Path(folder)
    if p.is_symlink() or not p.is_dir():
        return False
    marker = read_marker(p)
    if marker is not None:
        return marker.get("kind") == kind
    if kind == "engine":
        from .manifest import FORMAT

        return _keys(p / "manifest.json").get("format") == FORMAT
    if kind == "checkpoint":
        return ((p / "edge_awares_tiny.json").is_file() or "stages" in _keys(p / "edge_awares_policy.json")
                or is_ours(p / "run", "run"))
    if kind == "run":
        return {"config", "resolved"} <= set(_keys(p / "config.json"))
    if kind == "dataset":
        first = _first_record(p / "samples.jsonl")
        return (first.get("source") in ("synth", "cards")
                or {"judge", "oracle", "min_iou"} <= set(_keys(p / "config.json")))
    if kind == "demo":
        return {"config", "stages"} <= set(_keys(p / "demo_run.json"))
    raise ValueError(f"unknown output kind {kind!r}; legal: {', '.join(DIR_KINDS)}")


def file_is_ours(path: str | os.PathLike, kind: str) -> bool:
    """Whether the file at `path` carries the producer mark of `kind` (see FILE_KINDS); older outputs without the
    mark count when unmistakable: a trace whose process is named "edge-awares (...)", eval records."""
    p = Path(path)
    if kind == "png":
        try:
            from PIL import Image

            with Image.open(p) as im:
                return im.format == "PNG" and im.info.get("Software") == PRODUCER
        except Exception:  # not an image, truncated, unreadable: not ours
            return False
    if kind == "jsonl":
        first = _first_record(p)
        return first.get("producer") == PRODUCER or _EVAL_RECORD_KEYS <= set(first)
    if kind == "trajectories":
        return _TRAJECTORY_KEYS <= set(_first_record(p))
    d = _read_json(p)
    if not isinstance(d, dict):
        return False
    if kind == "json":
        return d.get("producer") == PRODUCER
    if kind == "trace":
        other = d.get("otherData")
        if isinstance(other, dict) and other.get("producer") == PRODUCER:
            return True
        events = d.get("traceEvents")
        return isinstance(events, list) and any(
            isinstance(e, dict) and e.get("name") == "process_name" and isinstance(e.get("args"), dict)
            and str(e["args"].get("name", "")).startswith("edge-awares (") for e in events[:3])
    raise ValueError(f"unknown file kind {kind!r}; legal: {', '.join(FILE_KINDS)}")


def png_info():
    """PIL PngInfo carrying the producer mark; pass as `pnginfo=` to Image.save(..., format="PNG")."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", PRODUCER)
    return info


# ---------------------------------------------------------------------------------------------- folders
def prepare_dir(path: str | os.PathLike, kind: str, *, force: bool = False, inputs=(), size_bytes: int | None = None,
                flag: str = "--force") -> Path:
    """Validate an output folder before any work; returns its resolved path. Writes nothing that stays.

    Fine: a missing or empty folder; a folder of ours of `kind` with `force` (the caller replaces or reuses it).
    Raises OutputError: `path` is a symbolic link, not a folder, not ours (even with `force`), ours without
    `force` (the message names `flag`), an input or a folder holding one (`inputs`: paths, None skipped; a new
    or own folder inside an input is fine), in a place that cannot be written, or on a disk with less than
    `size_bytes` free.
    """
    p = Path(path)
    noun = DIR_KINDS[kind]
    if p.is_symlink():
        raise OutputError(f"{p} is a symbolic link; refusing to write through it (give the real path)")
    out = p.resolve()
    _check_inputs(p, out, inputs, folder=True)
    try:
        if out.exists():
            if not out.is_dir():
                raise OutputError(f"{p} exists and is not a folder; refusing to replace it (choose a new path)")
            if any(out.iterdir()):
                if not is_ours(out, kind):
                    raise OutputError(f"{p} exists and is not {noun}; refusing to replace it (choose a new path)")
                if not force:
                    raise OutputError(f"{p} holds {noun} already; pass {flag} to replace it")
    except OSError as e:
        raise output_error(p, e) from None
    _check_writable(out.parent, size_bytes)
    if out.is_dir():
        _check_writable(out)
    return out


def remove_ours(path: str | os.PathLike, kind: str) -> None:
    """Delete `path` if it is a folder of ours of `kind` (or empty); nothing if missing. Raises OutputError for
    anything else."""
    p = Path(path)
    if not os.path.lexists(p):
        return
    try:
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
            return
        if not is_ours(p, kind):
            raise OutputError(f"{p} exists and is not {DIR_KINDS[kind]}; refusing to delete it (remove it yourself "
                              "or choose another path)")
        shutil.rmtree(p)
    except OSError as e:
        raise output_error(p, e) from None


def make_partial(parent: str | os.PathLike, name: str, kind: str) -> Path:
    """A new hidden folder `.NAME.partial-*` in `parent` that records this process as its owner."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the placed folder should read like any other
    write_marker(tmp, kind, owner=True)
    return tmp


def place(tmp: Path, out: Path, kind: str, force: bool = False, flag: str = "--force") -> Path:
    """Rename the finished partial `tmp` to `out` (same folder: atomic). An existing `out` must be empty, or ours
    of `kind` with `force`: it is renamed aside (as a partial, so a kill leaves something cleanable), the new one
    renamed in, then the old one deleted. Raises OutputError otherwise, leaving `tmp` to the caller."""
    out = Path(out)
    try:
        if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
            out.rmdir()
        if not os.path.lexists(out):
            os.rename(tmp, out)
        else:
            if not is_ours(out, kind) or out.is_symlink():
                raise OutputError(f"{out} appeared during the run and is not {DIR_KINDS[kind]}; refusing to replace "
                                  "it (the new output was discarded)")
            if not force:
                raise OutputError(f"{out} appeared during the run; pass {flag} to replace it")
            old = out.with_name(f".{out.name}.partial-old-{secrets.token_hex(4)}")
            os.rename(out, old)
            with contextlib.suppress(OSError):
                write_marker(old, kind, owner=True)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        write_marker(out, kind)  # drops the owner record
    except OSError as e:
        raise output_error(out, e) from None
    return out


@contextlib.contextmanager
def building(path: str | os.PathLike, kind: str, *, force: bool = False, inputs=(), size_bytes: int | None = None,
             flag: str = "--force", log=None):
    """Context manager for building an output folder whole: validates `path` (prepare_dir), removes stale
    partials of earlier runs into it, yields a fresh partial folder to fill, and on success places it at `path`
    (place). On any exception the partial is removed and the exception propagates."""
    out = prepare_dir(path, kind, force=force, inputs=inputs, size_bytes=size_bytes, flag=flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(out.parent, out.name, log)
        tmp = make_partial(out.parent, out.name, kind)
    except OSError as e:
        raise output_error(out, e) from None
    try:
        yield tmp
        place(tmp, out, kind, force=force, flag=flag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- stale partials
def clean_stale_partials(parent: str | os.PathLike, name: str, log=None) -> list[Path]:
    """Remove the `.NAME.partial-*` folders and files in `parent` whose recorded owner was a process on this host
    that is no longer running; returns what was removed (each logged). A folder records its owner in its marker,
    a file in its name (`.NAME.partial-PID-HOSTTAG-*`); anything without a record, from another host, or of a
    live process is kept."""
    log = log or _stderr
    prefix = f".{name}.partial-"
    removed = []
    try:
        entries = [e for e in Path(parent).iterdir() if e.name.startswith(prefix)]
    except OSError:
        return removed
    for e in entries:
        try:
            if e.is_symlink():
                continue
            if e.is_dir():
                owner = (read_marker(e) or {}).get("owner")
                if not isinstance(owner, dict) or _alive(owner):
                    continue
                shutil.rmtree(e)
            elif e.is_file():
                m = re.fullmatch(r"(\d+)-([0-9a-f]{8})-[0-9a-f]+", e.name[len(prefix):])
                if not m or m[2] != _host_tag():
                    continue
                owner = {"pid": int(m[1]), "host": socket.gethostname()}
                if _alive(owner):
                    continue
                e.unlink()
            else:
                continue
        except OSError:
            continue
        removed.append(e)
        log(f"removed {e}: a partial output left by process {owner['pid']}, which is no longer running")
    return removed


def _alive(owner: dict) -> bool:
    """Whether the recorded owner may still be running (True whenever that cannot be ruled out)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    start, now = owner.get("proc_start"), _proc_start(pid)
    return start is None or now is None or start == now  # a different start time: the pid was reused


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _stderr(msg: str) -> None:
    import sys

    print(f"edge-awares: {msg}", file=sys.stderr)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------- files
def check_file(path: str | os.PathLike, kind: str, inputs=()) -> Path:
    """Validate a single output file before any work; returns its resolved path.

    Raises OutputError when its folder does not exist (no folders are made for a file), it is a folder or a
    symbolic link, it is one of `inputs` (same resolved path, or os.path.samefile), it exists, is not empty and is
    not ours of `kind` (file_is_ours), or its folder cannot be written.
    """
    p = Path(path)
    if kind not in FILE_KINDS:
        raise ValueError(f"unknown file kind {kind!r}; legal: {', '.join(FILE_KINDS)}")
    if p.is_symlink():
        raise OutputError(f"{p} is a symbolic link; refusing to write through it (give the real path)")
    out = p.resolve()
    if not out.parent.is_dir():
        raise OutputError(f"{p}: the folder {p.parent} does not exist (create it first)")
    if out.is_dir():
        raise OutputError(f"{p} is a folder; give a file name")
    _check_inputs(p, out, inputs, folder=False)
    if out.exists():
        if not out.is_file():
            raise OutputError(f"{p} exists and is not a regular file; refusing to replace it")
        if out.stat().st_size and not file_is_ours(out, kind):  # an empty file, like an empty folder, holds nothing
            raise OutputError(f"{p} exists and is not {FILE_KINDS[kind]}; refusing to overwrite it (choose another "
                              "file, or remove it)")
    _check_writable(out.parent)
    return out


class AtomicFile:
    """A file written beside its target (`.NAME.partial-PID-HOSTTAG-*`) and renamed onto it on close(); discard()
    (or an exception inside `with`) removes it, so a failed write leaves nothing. Text mode "w" or binary "wb"."""

    def __init__(self, path: str | os.PathLike, kind: str, inputs=(), mode: str = "wb"):
        self.path, self.kind = check_file(path, kind, inputs), kind
        self.given = Path(path)
        parent = self.path.parent
        clean_stale_partials(parent, self.path.name)
        self.tmp = parent / f".{self.path.name}.partial-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
        try:
            self._f = open(self.tmp, "xb") if mode == "wb" else open(self.tmp, "x", encoding="utf-8")
        except OSError as e:
            raise output_error(self.given, e) from None
        self.closed = False

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            self.discard()
            raise output_error(self.given, e) from None

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.discard()
            raise output_error(self.given, e) from None

    @property
    def file(self):
        """The underlying file object (for writers such as PIL's Image.save)."""
        return self._f

    def close(self) -> Path:
        """Finish: flush, sync and rename onto the target (replacing only a file of ours). Raises OutputError."""
        if self.closed:
            return self.path
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            if os.path.lexists(self.path) and (self.path.is_symlink() or not self.path.is_file() or (
                    self.path.stat().st_size and not file_is_ours(self.path, self.kind))):
                raise OutputError(f"{self.given} appeared during the run and is not {FILE_KINDS[self.kind]}; "
                                  "refusing to overwrite it (the new output was discarded)")
            os.replace(self.tmp, self.path)
        except OutputError:
            self.discard()
            raise
        except OSError as e:
            self.discard()
            raise output_error(self.given, e) from None
        self.closed = True
        return self.path

    def discard(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def open_output(path: str | os.PathLike, kind: str, inputs=(), mode: str = "wb") -> AtomicFile:
    """An AtomicFile for `path` (check_file first). Raises OutputError."""
    return AtomicFile(path, kind, inputs, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, kind: str, inputs=()):
    """Context manager for writers that want a path, not a file object: check_file, then yield a temporary path
    beside `path` (same folder, so relative references stay right) that is renamed onto it on success and removed
    on failure. Raises OutputError."""
    with open_output(path, kind, inputs) as f:
        try:
            yield f.tmp
        except OSError as e:
            raise output_error(path, e) from None


def write_file_atomic(path: str | os.PathLike, data, kind: str, inputs=()) -> Path:
    """Write one output file whole: `data` is bytes, str (UTF-8), or a callable given the open binary file.
    Nothing is left behind on failure. Raises OutputError (see check_file; a full disk, a read-only place)."""
    with open_output(path, kind, inputs, "wb") as f:
        if callable(data):
            try:
                data(f.file)
            except OSError as e:
                raise output_error(path, e) from None
        else:
            f.write(data.encode() if isinstance(data, str) else data)
    return f.path


# ---------------------------------------------------------------------------------------------- errors
# Always about the place written (nothing the toolkit reads fails this way), and refusals that are, when the
# file named lies where the output goes.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_REFUSED = {errno.EACCES, errno.EPERM}


def output_error(path, e: OSError) -> OutputError:
    """One line: what could not be written and the operating system's reason."""
    return OutputError(f"cannot write {path}: {e.strerror or e}")


def is_write_failure(e: BaseException, where: str | os.PathLike, inputs=()) -> bool:
    """Whether `e` is the operating system refusing a write under `where` (full disk, read-only, no permission),
    as opposed to a failure to read one of `inputs`."""
    if not isinstance(e, OSError):
        return False
    if e.errno in _FULL_OR_READ_ONLY:
        return True
    if e.errno not in _REFUSED or e.filename is None:
        return False
    try:
        name = Path(os.fspath(e.filename)).resolve()
        return name.is_relative_to(Path(where).resolve()) and not any(
            name.is_relative_to(Path(i).resolve()) for i in inputs if i)
    except (TypeError, ValueError, OSError):
        return False


# ---------------------------------------------------------------------------------------------- helpers
def _check_inputs(given: Path, out: Path, inputs, folder: bool) -> None:
    for inp in inputs:
        if inp is None or inp == "":
            continue
        rp = Path(inp).resolve()
        same = out == rp
        if not same and out.exists() and rp.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, rp)
        if same:
            raise OutputError(f"{given} is the input {inp}; refusing to replace it (choose a new path)")
        if folder and out in rp.parents:
            raise OutputError(f"{given} holds the input {inp}; refusing to replace it (choose a new path)")


def _check_writable(folder: Path, size_bytes: int | None = None) -> None:
    """The nearest existing folder at or above `folder` must be writable (access check and a probe file that is
    removed at once) and, with `size_bytes`, have that much disk free."""
    base = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not base.is_dir():
        raise OutputError(f"cannot write under {folder}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {base}: permission denied")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edge-awares-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write in {base}: {e.strerror or e}") from None
    if size_bytes:
        free = shutil.disk_usage(base).free
        if free < size_bytes:
            raise OutputError(f"{folder}: needs {size_bytes / 1e9:.2f} GB of disk, {free / 1e9:.2f} GB free")


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _keys(path: Path) -> dict:
    d = _read_json(path)
    return d if isinstance(d, dict) else {}


def _first_record(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.loads(f.readline(1 << 20))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


__all__ = ["PRODUCER", "MARKER", "DIR_KINDS", "FILE_KINDS", "read_marker", "write_marker", "ensure_marker", "is_ours",
           "file_is_ours", "png_info", "prepare_dir", "remove_ours", "make_partial", "place", "building",
           "clean_stale_partials", "check_file", "AtomicFile", "open_output", "atomic_path", "write_file_atomic",
           "output_error", "is_write_failure"]
