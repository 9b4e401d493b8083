"""Sample and trajectory JSONL: round trips, relative image paths, typed errors with file:line."""

import json
import sys

import pytest
from PIL import Image

from edge_awares.data.format import (
    Sample,
    Trajectory,
    make_messages,
    read_samples,
    read_trajectories,
    write_samples,
    write_trajectories,
)
from edge_awares.errors import DataError, EdgeAwaresError


def _sample(i=0, image="img.png", **kw) -> Sample:
    return Sample(id=f"s{i}", image=image, question="What is the code?", answers=["K7P", "k7p"], **kw)


def test_sample_round_trip_with_optional_fields(tmp_path):
    img = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(img)
    full = _sample(image=str(img), evidence_box=(1, 2, 30, 40), needs_detail=True, crop_ids=["3"],
                   source="synth", meta={"template": "panel_code"})
    bare = _sample(1, image=str(img))
    path = write_samples(tmp_path / "s.jsonl", [full, bare])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["image"] == "img.png"  # relative to the JSONL's folder
    assert set(lines[1]) == {"id", "image", "question", "answers"}  # absent optionals are not written
    back = read_samples(path)
    assert back[0] == Sample(**{**full.__dict__, "image": str(tmp_path / "img.png")})
    assert back[1].evidence_box is None and back[1].crop_ids is None and back[1].meta == {}
    assert back[0].load_image().size == (8, 8)


def test_in_memory_images_are_saved_next_to_the_jsonl(tmp_path):
    s = _sample(image=Image.new("RGB", (16, 12), "red"))
    path = write_samples(tmp_path / "out" / "data.jsonl", [s], image_dir="imgs")
    assert json.loads(path.read_text())["image"] == "imgs/s0.png"
    back = read_samples(path)[0]
    assert Image.open(back.image).size == (16, 12)
    with pytest.raises(DataError, match="in-memory"):
        write_samples(tmp_path / "x.jsonl", [s], image_dir=None)


def test_dataset_folder_can_move(tmp_path):
    write_samples(tmp_path / "a" / "d.jsonl", [_sample(image=Image.new("RGB", (4, 4)))])
    (tmp_path / "a").rename(tmp_path / "b")
    assert read_samples(tmp_path / "b" / "d.jsonl")[0].load_image().size == (4, 4)


def test_trajectory_round_trip_lr_and_hr(tmp_path):
    s = _sample(image=Image.new("RGB", (4, 4)))
    lr = Trajectory.from_sample(s)
    hr = Trajectory.from_sample(_sample(1, image=Image.new("RGB", (4, 4))), crop_ids=["3", "4"])
    assert lr.label == "LR" and lr.crop_ids == [] and [m["role"] for m in lr.messages] == ["user", "assistant"]
    assert hr.label == "HR" and [m["role"] for m in hr.messages] == ["user", "assistant", "tool", "assistant"]
    assert hr.messages[1] == {"role": "assistant", "request": ["3", "4"]}
    assert [c["crop_id"] for c in hr.messages[2]["content"]] == ["3", "4"]
    assert hr.messages[-1]["content"] == [{"type": "text", "text": "K7P"}]
    assert hr.messages[0]["content"][0] == {"type": "image", "view": "lowres"}
    path = write_trajectories(tmp_path / "t.jsonl", [lr, hr])
    back = read_trajectories(path)
    assert [t.label for t in back] == ["LR", "HR"]
    assert back[1].messages == hr.messages and back[1].crop_ids == ["3", "4"]
    assert back[0].image.endswith("s0.png")


def test_trajectory_label_must_fit_crop_ids():
    with pytest.raises(DataError):
        Trajectory("t", "i.png", "q", ["a"], "HR", [], make_messages("q", "a"))
    with pytest.raises(DataError):
        Trajectory("t", "i.png", "q", ["a"], "XX", [], make_messages("q", "a"))


GOOD = {"id": "a", "image": "i.png", "question": "q?", "answers": ["x"]}
BAD_SAMPLES = [
    ("{not json", "invalid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "question"}), "missing field 'question'"),
    (json.dumps({**GOOD, "answers": "x"}), "'answers' must be list"),
    (json.dumps({**GOOD, "answers": [1]}), "list of strings"),
    (json.dumps({**GOOD, "evidence_box": [5, 5, 1, 1]}), "evidence_box"),
    (json.dumps({**GOOD, "needs_detail": "yes"}), "needs_detail"),
    (json.dumps({**GOOD, "question": "  "}), "empty"),
    (json.dumps([1, 2]), "JSON object"),
    (json.dumps(GOOD), "already used on line 1"),  # duplicate id
]


@pytest.mark.parametrize("line,message", BAD_SAMPLES)
def test_malformed_sample_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")  # blank line 2 is skipped, the bad one is line 3
    with pytest.raises(DataError) as e:
        read_samples(path)
    assert f"{path}:3:" in str(e.value) and message in str(e.value)
    assert isinstance(e.value, EdgeAwaresError)


TRAJ = {**GOOD, "label": "HR", "crop_ids": ["1"], "messages": make_messages("q?", "x", ["1"])}
BAD_TRAJECTORIES = [
    ({**TRAJ, "label": "MR"}, "label"),
    ({**TRAJ, "crop_ids": []}, "does not fit"),
    ({**TRAJ, "messages": make_messages("q?", "x", ["2"])}, "request equal to crop_ids"),
    ({**TRAJ, "label": "LR", "crop_ids": []}, "must not request"),
    ({**TRAJ, "messages": [{"role": "robot", "content": []}]}, "role"),
    ({**TRAJ, "messages": make_messages("q?", "x", ["1"])[:-1]}, "last message"),
    ({k: v for k, v in TRAJ.items() if k != "messages"}, "messages"),
]


@pytest.mark.parametrize("obj,message", BAD_TRAJECTORIES)
def test_malformed_trajectory_line(tmp_path, obj, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(obj) + "\n")
    with pytest.raises(DataError, match=message) as e:
        read_trajectories(path)
    assert f"{path}:1:" in str(e.value)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_samples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="directory"):
        read_trajectories(tmp_path)


def test_package_import_is_light():
    import subprocess

    code = "import sys, edge_awares.data, edge_awares.data.synth, edge_awares.data.loaders, " \
           "edge_awares.data.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
