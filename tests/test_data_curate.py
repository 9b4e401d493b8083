"""Curation: box -> crop mapping, judge rules, the LLM judge against a local fake OpenAI-compatible server, the
OCR and VLM oracles, and end-to-end runs on a tiny random-init checkpoint (files, labels, crops, resume)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from PIL import Image

from edge_awares.crops import AWARES_CROPS
from edge_awares.data.curate import CurateConfig, curate, read_records, repair_tail
from edge_awares.data.format import Sample, read_trajectories, write_samples
from edge_awares.data.judge import (
    EndpointSettings,
    JudgeError,
    LocalJudge,
    OpenAIJudge,
    RuleJudge,
    label_for,
    make_judge,
    parse_grades,
)
from edge_awares.data.oracle import OcrOracle, VlmOracle, clamp_box, crops_for_box, make_oracle, parse_box
from edge_awares.data.synth import make_sample, write_dataset
from edge_awares.errors import ConfigError, DataError, ModelLoadError
from edge_awares.views import Geometry, native_view

W = H = 448


# ----------------------------------------------------------------------------------------------- box -> crops
@pytest.mark.parametrize("box,ids,rule", [
    ((224, 0, 448, 224), ["1"], "iou"),  # exactly quadrant 1 (IoU 1; the top half only 0.5)
    ((10, 10, 200, 200), ["0"], "iou"),  # IoU 0.72 with quadrant 0
    ((0, 0, 448, 300), ["5"], "iou"),  # top half 0.75 beats the whole image 0.67: highest IoU wins
    ((5, 5, 440, 440), ["all"], "iou"),  # nearly the whole page
    ((300, 300, 320, 310), ["3"], "covering"),  # a word in the bottom-right quadrant
    ((200, 50, 250, 60), ["5"], "covering"),  # crosses the vertical midline near the top: top half
    ((200, 200, 250, 250), ["4"], "covering"),  # crosses both midlines near the middle: centre
    ((100, 220, 130, 230), ["7"], "covering"),  # crosses the horizontal midline left of the centre crop
    ((20, 20, 430, 120), ["5"], "covering"),  # wide but short: IoU with the top half 0.41 < 0.5
    ((10, 130, 440, 320), ["all"], "covering"),  # only the whole image contains it (best IoU 0.48, centre)
    ((320, 310, 300, 300), ["3"], "covering"),  # reversed corners are put in order
    (None, ["all"], "miss"),
    ((500, 500, 600, 600), ["all"], "miss"),  # outside the image
])
def test_crops_for_box(box, ids, rule):
    choice = crops_for_box(box, W, H, AWARES_CROPS)
    assert (choice.crop_ids, choice.rule) == (ids, rule)


def test_crops_for_box_min_iou_and_clamp():
    assert crops_for_box((10, 10, 200, 200), W, H, min_iou=0.8).rule == "covering"
    assert clamp_box((-5, -5, 20.2, 30.7), W, H) == (0, 0, 21, 31)
    assert crops_for_box((-50, -50, 220, 220), W, H).crop_ids == ["0"]  # clamped first


def test_covering_fallback_matches_synthetic_crop_ids():
    for i in range(25):
        s = make_sample(5, i)
        choice = crops_for_box(s.evidence_box, W, H)
        if choice.rule == "covering":
            assert choice.crop_ids == s.crop_ids, s.id


# ----------------------------------------------------------------------------------------------- judges
def test_label_rule():
    assert label_for(True, True) == "LR" and label_for(True, False) == "LR"
    assert label_for(False, True) == "HR"
    assert label_for(False, False) == "LR"
    assert label_for(False, False, "hr") == "HR" and label_for(False, False, "drop") is None


@pytest.mark.parametrize("metric,threshold,pred,answers,ok", [
    ("anls", None, "K7P", ["K7P"], True),
    ("anls", None, "k7p ", ["K7P"], True),
    ("anls", None, "K7R", ["K7P"], False),  # ANLS 0.67 < 0.85
    ("anls", 0.5, "K7R", ["K7P"], True),
    ("anls", None, "invoice number 12345", ["invoice number 12346"], True),  # 0.95
    ("exact", None, "The K7P.", ["k7p"], True),
    ("exact", None, "K7", ["K7P"], False),
    ("relaxed", None, "41.5", ["41"], True),  # within 5%
    ("relaxed", None, "45", ["41"], False),
    ("relaxed", None, "Red", ["red"], True),
])
def test_rule_judge_scores(metric, threshold, pred, answers, ok):
    v = RuleJudge(metric, threshold).verdict("q", answers, pred, "zzz")
    assert v.low_res_ok is ok and v.native_ok is False
    assert v.label == "LR"  # right at low res, or both wrong (a tie: LR by default)
    assert RuleJudge(metric, threshold).judge("q", answers, "zzz", pred) == ("HR" if ok else "LR")


@pytest.mark.parametrize("reply,grades", [
    ('{"1": "correct", "2": "wrong"}', (True, False)),
    ('Sure! ```json\n{"1": "wrong", "2": "correct"}\n```', (False, True)),
    ('{"1": true, "2": false}', (True, False)),
    ("Answer 1: correct\nAnswer 2: incorrect", (True, False)),
    ("1 - wrong, 2 - correct", (False, True)),
    ("I cannot tell", None),
    ('{"1": "correct"}', None),
])
def test_parse_grades(reply, grades):
    assert parse_grades(reply) == grades


def test_make_judge_errors(monkeypatch):
    monkeypatch.delenv("EDGE_AWARES_JUDGE_URL", raising=False)
    monkeypatch.delenv("EDGE_AWARES_JUDGE_MODEL", raising=False)
    with pytest.raises(ConfigError, match="EDGE_AWARES_JUDGE_URL"):
        make_judge("llm")
    with pytest.raises(ConfigError, match="model name"):
        make_judge("llm", url="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="legal"):
        make_judge("gpt")
    with pytest.raises(ConfigError):
        RuleJudge("anls", both_wrong="maybe")
    monkeypatch.setenv("EDGE_AWARES_JUDGE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("EDGE_AWARES_JUDGE_MODEL", "m")
    assert isinstance(make_judge("llm"), OpenAIJudge)


# ----------------------------------------------------------------------------------------------- fake endpoint
class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, reply = srv.script.pop(0) if srv.script else (200, None)
        if reply is None:
            reply = _grade(body["messages"][0]["content"])
        payload = reply if status != 200 else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": reply}}]})
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output clean
        pass


def _grade(prompt: str) -> str:
    """A 'model' that grades like an exact-match judge, read back from our own prompt."""
    line = lambda tag: next(x for x in prompt.splitlines() if x.startswith(tag)).split(": ", 1)[1]  # noqa: E731
    refs = [json.loads(r) for r in line("Reference answer(s)").split("; ")]
    verdict = {k: "correct" if json.loads(line(f"Answer {k}")).lower() in [r.lower() for r in refs] else "wrong"
               for k in ("1", "2")}
    return "Grades: " + json.dumps(verdict)


@pytest.fixture
def fake_llm():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen, srv.script = [], []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _endpoint(srv, **kw) -> EndpointSettings:
    return EndpointSettings(f"http://127.0.0.1:{srv.server_address[1]}/v1", "judge-model", timeout_s=5, **kw)


def test_openai_judge_against_local_server(fake_llm, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    judge = OpenAIJudge(_endpoint(fake_llm, key_env="TEST_JUDGE_KEY"))
    assert judge.judge("What code?", ["K7P"], "K7P", "K7P") == "LR"
    assert judge.judge("What code?", ["K7P"], "KTP", "k7p") == "HR"
    v = judge.verdict("What code?", ["K7P"], "x", "y")
    assert (v.low_res_ok, v.native_ok, v.label, v.fallback) == (False, False, "LR", False)
    req = fake_llm.seen[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    monkeypatch.delenv("TEST_JUDGE_KEY")
    judge.judge("q", ["a"], "a", "b")
    assert fake_llm.seen[-1]["auth"] is None  # no key in the environment: no auth header


def test_openai_judge_retries_fallback_and_errors(fake_llm):
    judge = OpenAIJudge(_endpoint(fake_llm, retries=1))
    fake_llm.script = [(503, "busy")]
    assert judge.judge("q", ["K7P"], "nope", "K7P") == "HR"  # retried once after the 503
    assert judge.calls == 2
    fake_llm.script = [(200, "I refuse to grade.")]
    v = judge.verdict("q", ["K7P"], "K7P", "nope")
    assert v.fallback and v.label == "LR" and v.raw == "I refuse to grade."  # the anls rule decided
    fake_llm.script = [(401, '{"error": "bad key"}')]
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.judge("q", ["a"], "a", "a")
    fake_llm.script = [(500, "x"), (500, "y")]
    with pytest.raises(JudgeError, match="gave up after 2"):
        judge.judge("q", ["a"], "a", "a")


def test_openai_judge_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    judge = OpenAIJudge(EndpointSettings(f"http://127.0.0.1:{port}/v1", "m", timeout_s=2, retries=0))
    with pytest.raises(JudgeError, match="cannot reach"):
        judge.judge("q", ["a"], "a", "b")


def test_local_judge_runs_and_falls_back(tiny_ckpt):
    judge = LocalJudge(str(tiny_ckpt), max_new_tokens=4)
    v = judge.verdict("What code?", ["K7P"], "K7P", "x")  # random weights: the reply is noise
    assert v.label == "LR" and v.low_res_ok
    assert v.fallback or parse_grades(v.raw) is not None


# ----------------------------------------------------------------------------------------------- oracles
def test_ocr_match_logic_without_ocr():
    o = OcrOracle(min_similarity=0.8)
    lines = [[("Total:", 0.99, (10, 10, 50, 20)), ("1,234.50", 0.98, (55, 10, 100, 20))],
             [("Invoice", 0.99, (10, 40, 60, 50)), ("K7P", 0.97, (70, 40, 90, 50))],
             [("code", 0.9, (10, 80, 40, 90)), ("K7P", 0.95, (50, 80, 70, 90))]]
    sim, box, d = o.match(lines, ["1234.50"])
    assert box == (55, 10, 100, 20) and sim == 1.0  # punctuation ignored
    sim, box, d = o.match(lines, ["Invoice K7P"])
    assert box == (10, 40, 90, 50)  # a two-word run
    sim, box, d = o.match(lines, ["K7P"])
    assert box == (70, 40, 90, 50) and d["matches"] == 2  # higher OCR score wins; the twin is reported
    sim, box, d = o.match(lines, ["1234.58"])
    assert box is not None and 0.8 <= sim < 1  # one slip in seven characters
    assert o.match(lines, ["K8Q"])[1] is None  # 0.33: too far
    sim, box, d = o.match(lines, ["50"])  # 1-2 characters: exact only (not the "50" inside 1,234.50)
    assert box is None and d["reason"] == "answer text not found"
    assert o.match([], ["K7P"])[2]["reason"] == "no OCR text"


def test_ocr_oracle_on_synthetic_page():
    pytest.importorskip("rapidocr", reason="rapidocr not installed (pip install 'rapidocr>=3.10,<4')")
    oracle = make_oracle("ocr")
    # Panel codes (three characters from an alphabet without look-alikes) appear once per page.
    sample = next(s for s in (make_sample(0, i) for i in range(60)) if s.meta["template"] == "panel_code")
    found = oracle.locate(sample, sample.image, sample.answers)
    assert found.box is not None, found.detail
    ev = sample.evidence_box
    cx, cy = (found.box[0] + found.box[2]) / 2, (found.box[1] + found.box[3]) / 2
    assert ev[0] <= cx <= ev[2] and ev[1] <= cy <= ev[3], (found.box, ev)
    assert crops_for_box(found.box, W, H).crop_ids == sample.crop_ids


@pytest.mark.parametrize("text,box", [
    ("[100, 200, 500, 600]", (100, 200, 500, 600)),
    ('{"bbox_2d": [10, 20, 30, 40], "label": "code"}', (10, 20, 30, 40)),
    ("(1.5, 2, 3, 4)", (1.5, 2, 3, 4)),
    ("the box is 5 6 7 8 I think", (5, 6, 7, 8)),
    ("around 1 2", None),
    ("", None),
])
def test_parse_box(text, box):
    assert parse_box(text) == box


def test_vlm_oracle_scales_boxes():
    img = Image.new("RGB", (500, 300), "white")
    session = SimpleNamespace(geometry=Geometry(), crop_set=AWARES_CROPS, calls=[])

    def run(image, question, **kw):
        session.calls.append((question, kw))
        return SimpleNamespace(answer=session.reply)

    session.run = run
    sample = Sample("s", "x.png", "What is the code?", ["K7P"])
    session.reply = "[100, 200, 500, 600]"
    found = VlmOracle(session).locate(sample, img, ["K7P"])
    assert found.box == (50, 60, 250, 180) and found.source == "vlm"
    assert "K7P" in session.calls[0][0] and session.calls[0][1]["view"] == "native"
    view = native_view(img, Geometry())
    session.reply = f"[0, 0, {view.width}, {view.height // 2}]"
    assert VlmOracle(session, coords="pixels").locate(sample, img, ["K7P"]).box == (0, 0, 500, 150)
    session.reply = "I do not know"
    found = VlmOracle(session).locate(sample, img, ["K7P"])
    assert found.box is None and "no box" in found.detail["reason"]
    with pytest.raises(ConfigError):
        VlmOracle(session, coords="percent")


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def synth6(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth") / "d", 6, seed=3).parent


def _cfg(tiny_ckpt, data, out, **kw):
    return CurateConfig(model=str(tiny_ckpt), data=str(data), out=str(out), max_new_tokens=4, **kw)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_curate_end_to_end_files_and_labels(tiny_ckpt, synth6, tmp_path):
    out = tmp_path / "cur"
    report = curate(_cfg(tiny_ckpt, synth6, out))
    for name in ("curation.jsonl", "trajectories.jsonl", "report.json", "report.md", "config.json"):
        assert (out / name).is_file(), name
    recs = _lines(out / "curation.jsonl")
    assert len(recs) == 6 and all(r["label"] in ("LR", "HR") for r in recs)
    for r in recs:
        assert r["low_res"]["visual_tokens"] * 4 == r["native"]["visual_tokens"]
        assert set(r["ms"]) >= {"low_res", "native", "judge", "total"}
    trajs = read_trajectories(out / "trajectories.jsonl", image_roots=[synth6])  # they point at the data's images
    assert [t.id for t in trajs] == [r["id"] for r in recs]
    assert all(t.image.endswith(".png") and (out / t.image).resolve().is_file() for t in trajs)
    assert report["counts"]["curated"] == 6 and report["labels"]["LR"] + report["labels"]["HR"] == 6
    assert json.loads((out / "report.json").read_text())["labels"] == report["labels"]
    assert "# Curation report" in (out / "report.md").read_text()


def test_curate_hr_trajectories_have_oracle_crops(tiny_ckpt, synth6, tmp_path):
    # A random model is wrong at both resolutions; "both wrong -> HR" sends every sample through the oracle.
    out = tmp_path / "cur"
    report = curate(_cfg(tiny_ckpt, synth6, out, both_wrong="hr", oracle="gt"))
    assert report["labels"]["HR"] == 6 and report["oracle"]["coverage"] == 1.0
    data = {s["id"]: s for s in _lines(synth6 / "samples.jsonl")}
    for t in read_trajectories(out / "trajectories.jsonl", image_roots=[synth6]):
        assert t.label == "HR" and t.crop_ids == data[t.id]["crop_ids"]  # gt box -> covering == synth's crop
        assert t.messages[1] == {"role": "assistant", "request": t.crop_ids}
    assert sum(report["crop_ids"].values()) == 6 and report["vs_data"]["hr_crop_matches_data"] == 1.0
    # drop: no trajectories at all, every record marked
    out2 = tmp_path / "drop"
    report = curate(_cfg(tiny_ckpt, synth6, out2, both_wrong="drop", limit=2))
    assert report["counts"]["dropped"] == 2 and (out2 / "trajectories.jsonl").read_text() == ""


def test_curate_vlm_oracle_through_session(tiny_ckpt, synth6, tmp_path):
    report = curate(_cfg(tiny_ckpt, synth6, tmp_path / "v", both_wrong="hr", oracle="vlm", limit=2))
    recs = _lines(tmp_path / "v" / "curation.jsonl")
    assert all(r["oracle"]["source"] == "vlm" and "reply" in r["oracle"] for r in recs)
    assert all(r["crop_ids"] for r in recs) and report["labels"]["HR"] == 2  # a miss still fetches `all`


def test_curate_resume_skips_done_samples(tiny_ckpt, synth6, tmp_path):
    out = tmp_path / "cur"
    seen = []
    curate(_cfg(tiny_ckpt, synth6, out, limit=3), on_record=lambda r: seen.append(r["id"]))
    assert len(seen) == 3
    # A kill mid-write leaves a torn line; a kill between the two writes, a trajectory without its record.
    with (out / "curation.jsonl").open("a") as f:
        f.write('{"id": "synth-3-000004", "sta')
    traj_lines = (out / "trajectories.jsonl").read_text().splitlines()
    with (out / "trajectories.jsonl").open("a") as f:
        f.write(traj_lines[0].replace("synth-3-000000", "synth-3-000003") + "\n")
    seen.clear()
    report = curate(_cfg(tiny_ckpt, synth6, out), on_record=lambda r: seen.append(r["id"]))
    assert seen == [f"synth-3-00000{i}" for i in (3, 4, 5)]  # the first three were not redone
    assert report["counts"]["this_run"] == 3 and report["counts"]["curated"] == 6
    ids = [json.loads(x)["id"] for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert ids == sorted(set(ids)) and len(ids) == 6
    assert len(read_records(out / "curation.jsonl")) == 6
    seen.clear()
    curate(_cfg(tiny_ckpt, synth6, out), on_record=lambda r: seen.append(r["id"]))
    assert seen == []  # all done
    with pytest.raises(ConfigError, match="judge"):
        curate(_cfg(tiny_ckpt, synth6, out, judge="exact"))
    curate(_cfg(tiny_ckpt, synth6, out, judge="exact", resume=False, limit=2),
           on_record=lambda r: seen.append(r["id"]))
    assert len(seen) == 2 and len(_lines(out / "curation.jsonl")) == 2


def test_repair_tail(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"b": ')
    assert repair_tail(p) and p.read_text() == '{"a": 1}\n'
    assert not repair_tail(p)


def test_curate_llm_judge_reports_agreement(tiny_ckpt, synth6, tmp_path, fake_llm):
    url = f"http://127.0.0.1:{fake_llm.server_address[1]}/v1"
    report = curate(_cfg(tiny_ckpt, synth6, tmp_path / "llm", judge="llm", judge_url=url, judge_model="m",
                         limit=4))
    assert len(fake_llm.seen) == 4
    g = report["judge_agreement"]
    assert g["n"] == 4 and g["label"] == 1.0 and g["unparsed_replies"] == 0  # exact-grading fake agrees
    assert "Judge agreement" in (tmp_path / "llm" / "report.md").read_text()


def test_curate_per_sample_errors_and_skips(tiny_ckpt, synth6, tmp_path):
    good = Sample("ok", str(synth6 / "images" / "synth-3-000000.png"), "What colour?", ["red"])
    missing = Sample("gone", str(tmp_path / "missing.png"), "What?", ["x"])
    hidden = Sample("hidden", good.image, "What?", [])
    write_samples(tmp_path / "mixed" / "s.jsonl", [good, missing, hidden])
    # The images lie outside the data's folder: allowed here with image roots (tests/test_input_safety.py
    # covers the refusal).
    report = curate(_cfg(tiny_ckpt, tmp_path / "mixed", tmp_path / "out", image_roots=(str(tmp_path), str(synth6))))
    c = report["counts"]
    assert (c["curated"], c["errors"], c["skipped"]) == (1, 1, 1)
    recs = read_records(tmp_path / "out" / "curation.jsonl")
    assert "no such file" in recs["gone"]["error"] and recs["hidden"]["status"] == "skipped"
    assert recs["gone"]["where"].endswith("s.jsonl:2") and report["bad_samples"]["count"] == 1


def test_curate_bad_inputs(tiny_ckpt, synth6, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_AWARES_JUDGE_URL", raising=False)
    with pytest.raises(DataError, match="no such"):
        curate(_cfg(tiny_ckpt, tmp_path / "nope", tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "s.jsonl").write_text("")
    with pytest.raises(DataError, match="no samples"):
        curate(_cfg(tiny_ckpt, tmp_path / "empty", tmp_path / "o"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        curate(_cfg(tmp_path, synth6, tmp_path / "o"))
    with pytest.raises(ConfigError, match="judge-threshold"):
        curate(_cfg(tiny_ckpt, synth6, tmp_path / "o", judge_threshold=1.5))
    with pytest.raises(ConfigError, match="oracle"):
        curate(_cfg(tiny_ckpt, synth6, tmp_path / "o", oracle="magic"))
    with pytest.raises(ConfigError, match="judge-url"):
        curate(_cfg(tiny_ckpt, synth6, tmp_path / "o", judge="llm", judge_url="", judge_model="m"))
    assert not (tmp_path / "o").exists()  # nothing is written before the settings are known good
