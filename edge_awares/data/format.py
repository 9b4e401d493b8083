"""The one on-disk sample format (evaluation / curation input) and the trajectory format (training input).

Both are JSONL, one object per line; an ``image`` is a path relative to the JSONL file's folder.

Sample line::

    {"id": "synth-0-000003", "image": "images/synth-0-000003.png",
     "question": "What is the code written in the green panel?", "answers": ["K7P"],
     "evidence_box": [301, 40, 327, 49], "needs_detail": true, "crop_ids": ["1"], "source": "synth"}

- ``id`` (str, required, unique in a file), ``image`` (str, required), ``question`` (str, required, non-empty)
- ``answers`` (list of str, required; every string is an acceptable answer; empty when a benchmark hides them)
- ``evidence_box`` (optional): [x0, y0, x1, y1] in pixels of the original image, where the answer is written
- ``needs_detail`` (optional bool): whether the answer is expected to need more than the low-res view
- ``crop_ids`` (optional list of str): the smallest crop(s) of the crop set that contain the evidence box
- ``source`` (optional str): where it comes from ("synth", "chartqa", ...); ``meta`` (optional object): free-form

Trajectory line (one training conversation; the protocol renders the actual prompt text later)::

    {"id": ..., "image": ..., "question": ..., "answers": [...], "label": "HR", "crop_ids": ["3"],
     "messages": [
       {"role": "user", "content": [{"type": "image", "view": "lowres"}, {"type": "text", "text": "Q?"}]},
       {"role": "assistant", "request": ["3"]},
       {"role": "tool", "content": [{"type": "image", "view": "crop", "crop_id": "3"}]},
       {"role": "assistant", "content": [{"type": "text", "text": "K7P"}]}]}

``label`` is "LR" (answered from the low-res view: ``crop_ids`` empty, messages = user, assistant answer) or
"HR" (one crop turn: ``crop_ids`` non-empty and equal to the assistant ``request``; one tool image per id).
Readers raise DataError naming ``file:line`` for a malformed line and a clear DataError for a missing file. An
image path must resolve (symlinks followed) inside the JSONL's folder or a folder the caller allows
(``image_roots``; the rule is edge_awares.data.loaders.confine_image).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image

from ..errors import DataError

LABELS = ("LR", "HR")
ROLES = ("user", "assistant", "tool")


# ----------------------------------------------------------------------------------------------- helpers
def _req(d: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise ValueError(f"missing field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"field {key!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind) -> str:
    names = [k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,))]
    return " or ".join(names)


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {key!r} must be a list of strings")
    return list(value)


def _box(value: Any) -> tuple[float, float, float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or not (value[0] < value[2] and value[1] < value[3]):
        raise ValueError(f"field 'evidence_box' must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {value!r}")
    return tuple(value)


def _image_to_json(image, base_dir: Path | None) -> str:
    if isinstance(image, Image.Image):
        # An in-memory image has no path to write; write_samples saves it first.
        raise DataError("sample holds an in-memory image; save it (write_samples(..., image_dir=...)) first")
    path = Path(image)
    if base_dir is not None:
        # A relative path means relative to the current directory (as for open()); on disk it becomes relative
        # to the JSONL's folder, so a dataset folder can be moved or copied as a whole.
        return Path(os.path.relpath(path.resolve(), base_dir)).as_posix()
    return path.as_posix()


def _image_from_json(value: str, base_dir: Path | None) -> str:
    if base_dir is None or os.path.isabs(value):
        return value
    return str(base_dir / value)


# ----------------------------------------------------------------------------------------------- Sample
@dataclass
class Sample:
    """One question about one image. `image` is a path (str) or an in-memory PIL image (from a generator or a
    benchmark loader); `answers` are all acceptable answers; the optional fields are oracle annotations."""

    id: str
    image: Any  # str | os.PathLike | PIL.Image.Image
    question: str
    answers: list[str]
    evidence_box: tuple[float, float, float, float] | None = None
    needs_detail: bool | None = None
    crop_ids: list[str] | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)
    # Where the sample was read from ("file:line", "file[row n]"), for messages; never written out.
    where: str | None = field(default=None, compare=False, repr=False)

    def load_image(self) -> Image.Image:
        """The image as RGB. Raises ImageError if the file is missing or not an image."""
        from ..images import load_image

        return load_image(self.image)

    def to_json(self, base_dir: str | os.PathLike | None = None) -> dict:
        """A JSON-ready dict; the image path is made relative to `base_dir` (the JSONL's folder) if given."""
        d: dict[str, Any] = {
            "id": self.id,
            "image": _image_to_json(self.image, Path(base_dir).resolve() if base_dir is not None else None),
            "question": self.question,
            "answers": list(self.answers),
        }
        if self.evidence_box is not None:
            d["evidence_box"] = list(self.evidence_box)
        if self.needs_detail is not None:
            d["needs_detail"] = bool(self.needs_detail)
        if self.crop_ids is not None:
            d["crop_ids"] = list(self.crop_ids)
        if self.source is not None:
            d["source"] = self.source
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict, base_dir: str | os.PathLike | None = None) -> "Sample":
        """Parse one JSON object; a relative image path is resolved against `base_dir`.

        Raises ValueError (readers turn it into DataError with file:line) on a missing or mistyped field.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a sample must be a JSON object, got {type(d).__name__}")
        base = Path(base_dir) if base_dir is not None else None
        question = _req(d, "question", str)
        if not question.strip():
            raise ValueError("field 'question' is empty")
        needs_detail = d.get("needs_detail")
        if needs_detail is not None and not isinstance(needs_detail, bool):
            raise ValueError("field 'needs_detail' must be true, false or absent")
        source = d.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError("field 'source' must be a string")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("field 'meta' must be an object")
        return cls(
            id=_req(d, "id", str),
            image=_image_from_json(_req(d, "image", str), base),
            question=question,
            answers=_str_list(_req(d, "answers", list), "answers"),
            evidence_box=_box(d["evidence_box"]) if d.get("evidence_box") is not None else None,
            needs_detail=needs_detail,
            crop_ids=_str_list(d["crop_ids"], "crop_ids") if d.get("crop_ids") is not None else None,
            source=source,
            meta=meta,
        )


# ----------------------------------------------------------------------------------------------- Trajectory
def make_messages(question: str, answer: str, crop_ids: Sequence[str] = ()) -> list[dict]:
    """The protocol-neutral conversation: low-res view + question, optionally one crop turn, then the answer."""
    messages: list[dict] = [
        {"role": "user", "content": [{"type": "image", "view": "lowres"}, {"type": "text", "text": question}]}
    ]
    if crop_ids:
        messages.append({"role": "assistant", "request": list(crop_ids)})
        crops = [{"type": "image", "view": "crop", "crop_id": c} for c in crop_ids]
        messages.append({"role": "tool", "content": crops})
    messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _check_messages(messages: Any, label: str, crop_ids: list[str]) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] must be an object with a role in {ROLES}")
        if "content" in m and not isinstance(m["content"], list):
            raise ValueError(f"messages[{i}].content must be a list")
        if "content" not in m and "request" not in m:
            raise ValueError(f"messages[{i}] has neither 'content' nor 'request'")
    if messages[0]["role"] != "user":
        raise ValueError("the first message must be the user's")
    last = messages[-1]
    if last["role"] != "assistant" or "content" not in last:
        raise ValueError("the last message must be the assistant's answer")
    requests = [m["request"] for m in messages if "request" in m]
    if label == "HR" and crop_ids not in requests:
        raise ValueError(f"an HR trajectory must contain an assistant request equal to crop_ids {crop_ids}")
    if label == "LR" and requests:
        raise ValueError("an LR trajectory must not request crops")
    return messages


@dataclass
class Trajectory:
    """One training conversation. label "LR": answered from the low-res view; "HR": after one crop turn."""

    id: str
    image: Any  # str | os.PathLike (a PIL image only before writing is not supported: trajectories point at files)
    question: str
    answers: list[str]
    label: str
    crop_ids: list[str]
    messages: list[dict]
    source: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.label not in LABELS:
            raise DataError(f"trajectory label must be one of {LABELS}, got {self.label!r}")
        if (self.label == "HR") != bool(self.crop_ids):
            raise DataError(f"label {self.label} does not fit crop_ids {self.crop_ids} (LR: none, HR: at least one)")

    @classmethod
    def from_sample(cls, sample: Sample, crop_ids: Sequence[str] = (), answer: str | None = None) -> "Trajectory":
        """LR trajectory if `crop_ids` is empty, else HR; the answer defaults to the sample's first answer."""
        if answer is None:
            if not sample.answers:
                raise DataError(f"sample {sample.id!r} has no answer to train on")
            answer = sample.answers[0]
        crop_ids = list(crop_ids)
        return cls(
            id=sample.id, image=sample.image, question=sample.question, answers=list(sample.answers),
            label="HR" if crop_ids else "LR", crop_ids=crop_ids,
            messages=make_messages(sample.question, answer, crop_ids), source=sample.source, meta=dict(sample.meta),
        )

    def to_json(self, base_dir: str | os.PathLike | None = None) -> dict:
        d = {
            "id": self.id,
            "image": _image_to_json(self.image, Path(base_dir).resolve() if base_dir is not None else None),
            "question": self.question,
            "answers": list(self.answers),
            "label": self.label,
            "crop_ids": list(self.crop_ids),
            "messages": self.messages,
        }
        if self.source is not None:
            d["source"] = self.source
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict, base_dir: str | os.PathLike | None = None) -> "Trajectory":
        """Parse one JSON object. Raises ValueError on a missing, mistyped or inconsistent field."""
        if not isinstance(d, dict):
            raise ValueError(f"a trajectory must be a JSON object, got {type(d).__name__}")
        label = _req(d, "label", str)
        if label not in LABELS:
            raise ValueError(f"field 'label' must be one of {LABELS}, got {label!r}")
        crop_ids = _str_list(_req(d, "crop_ids", list), "crop_ids")
        if (label == "HR") != bool(crop_ids):
            raise ValueError(f"label {label} does not fit crop_ids {crop_ids} (LR: none, HR: at least one)")
        return cls(
            id=_req(d, "id", str),
            image=_image_from_json(_req(d, "image", str), Path(base_dir) if base_dir is not None else None),
            question=_req(d, "question", str),
            answers=_str_list(_req(d, "answers", list), "answers"),
            label=label,
            crop_ids=crop_ids,
            messages=_check_messages(d.get("messages"), label, crop_ids),
            source=d.get("source"),
            meta=d.get("meta") or {},
        )


# ----------------------------------------------------------------------------------------------- JSONL I/O
def iter_jsonl(path: str | os.PathLike,
               bad_line: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, object) for every non-blank line. Raises DataError for a missing or non-regular file, and
    for a line that is not UTF-8 JSON, unless `bad_line` is given: then it is called with (line number, reason)
    and the line skipped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DataError(f"{path}: not a regular file")
    # Bytes, decoded line by line: a text-mode reader fails on bad UTF-8 a whole buffer early, at no line.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
                continue
            except UnicodeDecodeError as e:
                reason = f"not UTF-8 text (byte {e.start + 1})"
            except json.JSONDecodeError as e:
                reason = f"invalid JSON ({e.msg} at column {e.colno})"
            except RecursionError:
                reason = "invalid JSON (nested too deeply)"
            if bad_line is None:
                raise DataError(f"{path}:{lineno}: {reason}")
            bad_line(lineno, reason)


def _read(path, cls, image_roots: Sequence[str | os.PathLike] = ()) -> list:
    from .loaders import check_image_roots, confine_image  # loaders imports this module

    roots = check_image_roots(image_roots)
    path = Path(path)
    base = path.parent
    out, seen = [], {}
    for lineno, obj in iter_jsonl(path):
        try:
            item = cls.from_json(obj, base_dir=base)
            confine_image(obj["image"], base, roots)  # from_json checked it is a string
        except (ValueError, DataError) as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if item.id in seen:
            raise DataError(f"{path}:{lineno}: id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = lineno
        if isinstance(item, Sample):
            item.where = f"{path}:{lineno}"
        out.append(item)
    return out


def read_samples(path: str | os.PathLike, image_roots: Sequence[str | os.PathLike] = ()) -> list[Sample]:
    """All samples of a JSONL file, image paths resolved against its folder and confined to it or `image_roots`.
    Raises DataError (file:line), ConfigError (an image root that is not a folder)."""
    return _read(path, Sample, image_roots)


def read_trajectories(path: str | os.PathLike, image_roots: Sequence[str | os.PathLike] = ()) -> list[Trajectory]:
    """All trajectories of a JSONL file, image paths resolved against its folder and confined to it or
    `image_roots`. Raises DataError (file:line), ConfigError (an image root that is not a folder)."""
    return _read(path, Trajectory, image_roots)


def _write(path, items: Iterable, image_dir: str | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            if isinstance(item.image, Image.Image):
                if image_dir is None:
                    raise DataError(f"{item.id}: in-memory image and no image_dir to save it in")
                folder = base / image_dir
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{_safe_name(item.id)}.png"
                image = item.image
                if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
                    image = image.convert("RGB")  # e.g. CMYK JPEG pages: PNG cannot hold them
                # Default PNG settings: the same pixels give the same bytes (the determinism tests rely on it).
                image.save(target, format="PNG")
                item = replace(item, image=str(target))
            d = item.to_json(base)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path


def _safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def write_samples(path: str | os.PathLike, samples: Iterable[Sample], image_dir: str | None = "images") -> Path:
    """Write samples as JSONL; in-memory images are saved as PNG under `image_dir` (relative to the JSONL)."""
    return _write(path, samples, image_dir)


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory],
                       image_dir: str | None = "images") -> Path:
    """Write trajectories as JSONL; in-memory images are saved as PNG under `image_dir`."""
    return _write(path, trajectories, image_dir)
