"""Loaders for local copies of common benchmarks (ChartQA, DocVQA, TextVQA, V*, POPE), mapped to `Sample`.

Local paths only: a JSONL file (our format or the benchmark's own columns), a parquet file or folder (needs
pyarrow), or a folder written by ``datasets.save_to_disk`` (needs datasets). Images stored as bytes become
lazily decoded in-memory PIL images, or files in ``image_cache`` (named by content hash) when one is given;
images stored as paths stay paths, resolved against the dataset's folder and confined to it (confine_image:
the one rule for every image path a data file names; more folders only where the user allows them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from PIL import Image

from ..errors import BackendUnavailableError, ConfigError, DataError
from ..images import DEFAULT_MAX_BYTES
from .format import Sample, iter_jsonl
from .metrics import extract_choice

if TYPE_CHECKING:
    from .badsamples import BadSamples

OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Columns:
    """Candidate column names of one benchmark, first match wins."""

    question: tuple[str, ...] = ("question",)
    answers: tuple[str, ...] = ("answers", "answer")
    id: tuple[str, ...] = ("id", "question_id", "questionId", "qid")
    image: tuple[str, ...] = ("image", "img", "image_path", "file_name", "image_file")
    options: tuple[str, ...] = ()


BENCHMARKS: dict[str, Columns] = {
    # HuggingFaceM4/ChartQA uses query/label; the lmms-lab copy uses question/answer.
    "chartqa": Columns(question=("query", "question"), answers=("label", "answer", "answers")),
    "docvqa": Columns(id=("questionId", "question_id", "id", "qid")),
    "textvqa": Columns(id=("question_id", "id", "qid")),
    "pope": Columns(answers=("answer", "answers", "label"), id=("question_id", "id", "qid")),
    # lmms-eval's V* copy has the question and inline options in `text` and the letter in `label`.
    "vstar": Columns(question=("question", "text"), answers=("answer", "label", "answers"),
                     options=("options", "choices")),
    # Our own sample format (or any file with question/answers/image columns).
    "samples": Columns(),
}
ALIASES = {"v*": "vstar", "v_star": "vstar", "vstar_bench": "vstar", "jsonl": "samples", "synth": "samples"}


def benchmark_columns(name: str) -> tuple[str, Columns]:
    """(canonical name, columns) for a benchmark name. Raises ConfigError listing the known names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key, BENCHMARKS[key]


# ----------------------------------------------------------------------------------------------- public API
def iter_benchmark(name: str, path: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
                   image_cache: str | os.PathLike | None = None, image_roots: Sequence[str | os.PathLike] = (),
                   bad: "BadSamples | None" = None) -> Iterator[Sample]:
    """Samples of benchmark `name` read from the local `path`, in file order; each sample's `where` names its
    ``file:line`` (``file[row n]`` for parquet and datasets).

    `split` picks one split of a parquet folder or of a saved DatasetDict (required when there are several);
    `limit` stops after that many rows; `image_cache` (a folder) receives images stored as bytes. Image paths
    must resolve inside the dataset's folder or one of `image_roots` (confine_image); refused paths are never
    opened. A bad row (invalid JSON, not an object, missing question, refused image path, undecodable bytes)
    raises DataError naming ``file:line``, or, when `bad` (data.badsamples.BadSamples) is given, is recorded
    there and skipped. Raises DataError (missing path, unknown layout, missing column, bad row),
    BackendUnavailableError (pyarrow or datasets needed but not installed) and ConfigError (unknown benchmark,
    an image root that is not a folder).
    """
    key, cols = benchmark_columns(name)
    roots = check_image_roots(image_roots)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (benchmark {key})")
    rows, base, per_row = _rows(path, split, bad)
    cache = Path(image_cache) if image_cache is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    mapper = None
    for i, (where, row) in enumerate(rows):
        if limit is not None and i >= limit:
            return
        if mapper is None:
            try:
                mapper = _Mapper(key, cols, list(row), where)
            except DataError as e:
                # Parquet and datasets share one schema: a missing column is the file's fault, not a row's.
                # JSONL rows each have their own keys, so a row without them is one bad sample.
                if bad is None or not per_row:
                    raise
                bad.add(where, str(e).removeprefix(f"{where}: "))
                continue
        try:
            sample = mapper(row, i, base, cache, roots)
        except (ValueError, TypeError, KeyError) as e:
            if bad is None:
                raise DataError(f"{where}: {e}") from None
            bad.add(where, str(e), _row_id(row, mapper.id))
            continue
        sample.where = where
        yield sample


def load_benchmark(name: str, path: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
                   image_cache: str | os.PathLike | None = None, image_roots: Sequence[str | os.PathLike] = (),
                   bad: "BadSamples | None" = None) -> list[Sample]:
    """All samples of iter_benchmark as a list (same arguments and errors)."""
    return list(iter_benchmark(name, path, split=split, limit=limit, image_cache=image_cache,
                               image_roots=image_roots, bad=bad))


# ----------------------------------------------------------------------------------------------- confinement
def check_image_roots(roots: Sequence[str | os.PathLike] | None) -> tuple[str, ...]:
    """The allowed extra image folders as strings; raises ConfigError for one that is not an existing folder."""
    out = []
    for root in roots or ():
        if not os.path.isdir(root):
            raise ConfigError(f"--image-root {root}: no such folder")
        out.append(str(root))
    return tuple(out)


def confine_image(path: str | os.PathLike, base: str | os.PathLike, roots: Sequence[str | os.PathLike] = ()) -> str:
    """The path of an image that a data file in folder `base` names: a relative `path` is joined to `base`.

    The one confinement rule for sample images: the path's real location (os.path.realpath, every symlink
    followed) must lie inside the real `base` or inside one of the real `roots` (the user's --image-root
    folders). Absolute paths and ``..`` are fine while they stay inside; anything else raises ValueError (readers
    turn it into a bad sample naming ``file:line``) before the file is ever opened. Returns the joined path as
    named (not the resolved one), so records keep the data's own paths.
    """
    p = Path(path)
    full = p if p.is_absolute() else Path(base) / p
    real = os.path.realpath(full)
    for root in (base, *roots):
        if _inside(real, os.path.realpath(root)):
            return str(full)
    via = f" (a symlink to {real})" if os.path.normpath(os.path.abspath(full)) != real else ""
    where = f"the data folder {os.path.realpath(base)}"
    if roots:
        where += " and the --image-root folders " + ", ".join(os.path.realpath(r) for r in roots)
    raise ValueError(f"image path {os.fspath(path)} resolves outside {where}{via}; allow more with --image-root")


def _inside(path: str, root: str) -> bool:
    path, root = os.path.normcase(path), os.path.normcase(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def _row_id(row: dict, column: str | None) -> str | None:
    value = row.get(column) if column and isinstance(row, dict) else None
    return str(value) if value is not None else None


# ----------------------------------------------------------------------------------------------- sources
def _rows(path: Path, split: str | None, bad: "BadSamples | None" = None
          ) -> tuple[Iterable[tuple[str, dict]], Path, bool]:
    """(rows as (location, dict), base folder for relative image paths, whether rows have their own keys)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _jsonl_rows(path, bad), path.parent, True
        if suffix == ".parquet":
            return _parquet_rows([path]), path.parent, False
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected .jsonl or .parquet")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return _datasets_rows(path, split), path, False
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return _parquet_rows(_pick_split(parquet, split, path)), path, False
    jsonl = sorted(path.glob("*.jsonl"))
    if jsonl:
        return _jsonl_rows(_pick_split(jsonl, split, path, single=True)[0], bad), path, True
    raise DataError(f"{path}: no .jsonl, .parquet or datasets.save_to_disk files found")


def _jsonl_rows(path: Path, bad: "BadSamples | None" = None):
    """(location, object) per line; a line that is not a JSON object raises DataError, or goes to `bad`."""
    on_bad_line = None if bad is None else (lambda lineno, reason: bad.add(f"{path}:{lineno}", reason))
    for lineno, obj in iter_jsonl(path, bad_line=on_bad_line):
        if not isinstance(obj, dict):
            reason = f"expected a JSON object, got {type(obj).__name__}"
            if bad is None:
                raise DataError(f"{path}:{lineno}: {reason}")
            bad.add(f"{path}:{lineno}", reason)
            continue
        yield f"{path}:{lineno}", obj


KNOWN_SPLITS = ("train", "test", "val", "validation", "dev", "testdev", "test_dev")


def _split_of(file: Path, root: Path) -> str | None:
    """The split a file belongs to in the Hugging Face layouts ("data/test-00000-of-00002.parquet",
    "cfg/test/0000.parquet", "test.jsonl"), else None: other file names are not guessed at."""
    m = re.match(r"^(\w+?)-\d{5}-of-\d{5}$", file.stem)
    if m:
        return m.group(1)
    if file.stem in KNOWN_SPLITS:
        return file.stem
    parent = file.relative_to(root).parts[:-1]
    if parent and parent[-1] in KNOWN_SPLITS:
        return parent[-1]
    return None


def _pick_split(files: list[Path], split: str | None, root: Path, single: bool = False) -> list[Path]:
    splits = {f: _split_of(f, root) for f in files}
    names = sorted({s for s in splits.values() if s})
    if split is not None:
        chosen = [f for f in files if splits[f] == split]
        if not chosen:
            raise DataError(f"{root}: no files of split {split!r}; splits found: {', '.join(names) or 'none'}")
    elif len(names) > 1:
        raise DataError(f"{root}: holds several splits ({', '.join(names)}); pass split=")
    else:
        chosen = files
    if single and len(chosen) > 1:
        raise DataError(f"{root}: several JSONL files ({', '.join(f.name for f in chosen)}); pass one file")
    return chosen


def _parquet_rows(files: list[Path]):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendUnavailableError("reading parquet needs the package 'pyarrow': pip install pyarrow") from None
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError family
            raise DataError(f"{f}: not a readable parquet file ({e})") from None
        n = 0
        # Batches keep memory bounded: a DocVQA shard holds hundreds of MB of page images.
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield f"{f}[row {n}]", row
                n += 1


def _datasets_rows(path: Path, split: str | None):
    try:
        import datasets
    except ImportError:
        raise BackendUnavailableError(
            "reading a datasets.save_to_disk folder needs the package 'datasets': pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError / its own errors for bad folders
        raise DataError(f"{path}: cannot load with datasets.load_from_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise DataError(f"{path}: choose a split with split=; splits: {', '.join(names)}")
        ds = ds[split]
    # Undecoded images ({'bytes', 'path'}) take the same path as parquet rows, and decode only when used.
    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
    for n, row in enumerate(ds):
        yield f"{path}[{split or 'rows'} {n}]", row


# ----------------------------------------------------------------------------------------------- mapping
def _first(names: tuple[str, ...], available: list[str]) -> str | None:
    return next((n for n in names if n in available), None)


class _Mapper:
    """Maps one row dict of a benchmark to a Sample; column names are resolved once, from the first row."""

    def __init__(self, key: str, cols: Columns, available: list[str], where: str):
        self.key = key
        self.question = _first(cols.question, available)
        self.answers = _first(cols.answers, available)
        self.image = _first(cols.image, available)
        self.id = _first(cols.id, available)
        self.options = _first(cols.options, available)
        for role, col, names in (("question", self.question, cols.question), ("answer", self.answers, cols.answers),
                                 ("image", self.image, cols.image)):
            if col is None:
                raise DataError(f"{where}: no {role} column for {key} (looked for {', '.join(names)}); "
                                f"columns: {', '.join(available)}")

    def __call__(self, row: dict, index: int, base: Path, cache: Path | None, roots: tuple[str, ...] = ()) -> Sample:
        question = row.get(self.question)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"empty or missing question in column {self.question!r}")
        answers = _answers(row.get(self.answers))
        meta: dict[str, Any] = dict(row.get("meta") or {}) if isinstance(row.get("meta"), dict) else {}
        options = row.get(self.options) if self.options else None
        if options:
            options = [str(o) for o in options]
            question = question.rstrip() + "\n" + "\n".join(
                f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options[: len(OPTION_LETTERS)]))
            answers = _letter_answers(row.get(self.answers), answers, options)
            meta["options"] = options
        sid = row.get(self.id) if self.id else None
        box = row.get("evidence_box")
        return Sample(
            id=str(sid) if sid is not None else f"{self.key}-{index}",
            image=_image(row.get(self.image), base, cache, roots),
            question=question,
            answers=answers,
            evidence_box=tuple(box) if box is not None else None,
            needs_detail=row.get("needs_detail"),
            crop_ids=[str(c) for c in row["crop_ids"]] if row.get("crop_ids") is not None else None,
            source=row.get("source") or self.key,
            meta=meta,
        )


def _answers(value: Any) -> list[str]:
    """A list of distinct answer strings from a string, a number, a list of them, or None (hidden answers)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, int, float)) else list(value)
    out: list[str] = []
    for v in items:
        s = str(v).strip()
        if s and s not in out:
            out.append(s)
    return out


def _letter_answers(raw: Any, answers: list[str], options: list[str]) -> list[str]:
    """Multiple-choice answers as option letters: from an index, a letter, or an option's text."""
    letters = OPTION_LETTERS[: len(options)]
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw < len(letters):
            raise ValueError(f"answer index {raw} outside the {len(options)} options")
        return [letters[raw]]
    out = []
    for a in answers:
        letter = extract_choice(a, letters, options)
        if letter and letter not in out:
            out.append(letter)
    return out or answers


def _image(value: Any, base: Path, cache: Path | None, roots: tuple[str, ...] = ()):
    if value is None:
        raise ValueError("no image")
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            # Binary only: bytes(n) of a number would allocate n bytes (a JSON row can say 10**12).
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"image 'bytes' must be binary data, got {type(data).__name__}")
            return _from_bytes(bytes(data), cache)
        if path:
            return confine_image(path, base, roots)
        raise ValueError("image entry has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        return _from_bytes(bytes(value), cache)
    if isinstance(value, (str, os.PathLike)):
        return confine_image(value, base, roots)
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def _from_bytes(data: bytes, cache: Path | None):
    if len(data) > DEFAULT_MAX_BYTES:  # the same cap as an image file (edge_awares.images)
        raise ValueError(f"image bytes: {len(data)} bytes exceeds the image file limit of {DEFAULT_MAX_BYTES} bytes")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only; pixels decode on first use
    except Exception as e:  # PIL raises UnidentifiedImageError / OSError for non-images
        raise ValueError(f"image bytes are not an image ({e})") from None
    if cache is None:
        return img
    # Content-addressed: DocVQA asks several questions about one page, which is then stored once.
    target = cache / f"{hashlib.sha1(data).hexdigest()}.{(img.format or 'img').lower()}"
    if not target.exists():
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return str(target)
