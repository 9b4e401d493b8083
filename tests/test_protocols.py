"""Request parsers over well- and ill-formed model outputs, forced-request round trips, and ERGO box mapping."""

import pytest
from PIL import Image

from edge_awares.crops import ALL, AWARES_CROPS
from edge_awares.errors import ProtocolError
from edge_awares.protocols import get_protocol, protocol_from_dict
from edge_awares.views import Geometry, make_view

CS = AWARES_CROPS


@pytest.mark.parametrize("text,kind,ids", [
    ("GET_CROPS: ['3']", "request", ["3"]),
    ("GET_CROPS:['3']", "request", ["3"]),
    ("GET_CROPS: [3]", "request", ["3"]),
    ("GET_CROPS ['0', '4']", "request", ["0", "4"]),
    ("GET_CROPS: [0,4]", "request", ["0", "4"]),
    ("GET_CROPS: [ '0' ,  '4' ]", "request", ["0", "4"]),
    ('GET_CROPS: ["2"]', "request", ["2"]),
    ("GET_CROPS: ['top-left']", "request", ["0"]),
    ("GET_CROPS: [bottom right]", "request", ["3"]),  # a name with a space is one name
    ("GET_CROPS: [0 4]", "request", ["0", "4"]),  # ids with only spaces between are several
    ("GET_CROPS: ['bottom-right', 'center']", "request", ["3", "4"]),
    ("GET_CROPS: ['3','3', '3']", "request", ["3"]),
    ("GET_CROPS: ['all', '3']", "request", [ALL]),
    ("GET_CROPS: ['all']", "request", [ALL]),
    ("get_crops: [ ' 2 ' ]", "request", ["2"]),
    ("GET_CROPS: [3", "request", ["3"]),
    ("GET_CROPS 5", "request", ["5"]),
    ("GET_CROPS: ['3', '9']", "request", ["3"]),  # unknown ids are dropped and reported
    ("GET_CROPS: ['9x']", "invalid", [ALL]),
    ("GET_CROPS: []", "invalid", [ALL]),
    ("GET_CROPS", "invalid", [ALL]),
    ("42.7", "answer", []),
    ("The total is 42.7", "answer", []),
])
def test_awares_parser(text, kind, ids):
    p = get_protocol("awares").parse(text, CS)
    assert p.kind == kind
    assert p.crop_ids == ids


def test_awares_dropped_tokens_reported():
    p = get_protocol("awares").parse("GET_CROPS: ['3', '9']", CS)
    assert p.dropped == ["9"]


@pytest.mark.parametrize("text,kind,ids", [
    ('<tool_call>\n{"name": "crop", "arguments": {"regions": ["0", "4"]}}\n</tool_call>', "request", ["0", "4"]),
    ('<tool_call>{"name":"crop","arguments":{"regions":["3"]}}</tool_call>', "request", ["3"]),
    ("<tool_call>\n{'name': 'crop', 'arguments': {'regions': ['1']}}\n</tool_call>", "request", ["1"]),
    ('<tool_call>{"name": "crop", "arguments": {"regions": "0, 4"}}</tool_call>', "request", ["0", "4"]),
    ('<tool_call>{"name": "crop", "arguments": {"regions": [2, 2]}}</tool_call>', "request", ["2"]),
    ('<tool_call>{"name": "crop", "arguments": {"regions": ["top-right"]}}</tool_call>', "request", ["1"]),
    ('<tool_call>{"name": "crop", "arguments": "{\\"regions\\": [\\"5\\"]}"}</tool_call>', "request", ["5"]),
    ('<tool_call>{"name": "crop", "arguments": {"regions": ["3"]}}', "request", ["3"]),  # no closing tag
    ('<tool_call>{"name": "crop", "arguments": {"region": "all"}}</tool_call>', "request", [ALL]),
    ('<tool_call>{"name": "zoom", "arguments": {"regions": ["3"]}}</tool_call>', "invalid", [ALL]),
    ('<tool_call>{"name": "crop", "arguments": {"regions": ["x"]}}</tool_call>', "invalid", [ALL]),
    ('<tool_call>{"name": "crop", "arguments": {}}</tool_call>', "invalid", [ALL]),
    ("<tool_call>not json at all</tool_call>", "invalid", [ALL]),
    ("<tool_call>", "invalid", [ALL]),
    ("blue", "answer", []),
])
def test_tool_call_parser(text, kind, ids):
    p = get_protocol("tool_call").parse(text, CS)
    assert p.kind == kind
    assert p.crop_ids == ids


@pytest.mark.parametrize("name", ["awares", "tool_call"])
@pytest.mark.parametrize("ids", [["3"], ["0", "4"], [ALL], ["5", "8"]])
def test_request_text_round_trip(name, ids):
    proto = get_protocol(name)
    img = Image.new("RGB", (640, 480))
    view = make_view(img, Geometry(), "lowres")
    parsed = proto.parse(proto.request_text(ids, CS, view, img), CS)
    assert parsed.kind == "request" and parsed.crop_ids == ids


def test_tool_call_request_matches_trl_rendering():
    text = get_protocol("tool_call").request_text(["0", "4"], CS, None, None)
    assert text == '<tool_call>\n{"name": "crop", "arguments": {"regions": ["0", "4"]}}\n</tool_call>'


def test_ergo_parse_and_answer():
    ergo = get_protocol("ergo")
    p = ergo.parse("<think>small text</think> <zoom>[10, 20.5, 110, 220]</zoom>", CS)
    assert p.kind == "request" and p.box == (10, 20.5, 110, 220)
    assert ergo.parse("<zoom>[50, 50, 10, 10]</zoom>", CS).kind == "invalid"
    assert ergo.parse("<zoom>[1, 2, x]</zoom>", CS).crop_ids == [ALL]
    a = ergo.parse("<think>hmm</think><answer> 42 </answer>", CS)
    assert a.kind == "answer" and ergo.answer_text(a.raw) == "42"
    assert ergo.answer_text("<think>a</think>plain") == "plain"


def test_ergo_box_scaling_margin_and_clamp():
    img = Image.new("RGB", (2000, 1000))
    ergo = get_protocol("ergo", max_tokens=640, margin=0.0)
    first = ergo.first_view(img, ergo.geometry(Geometry(max_pixels=10**7)))
    assert first.n_tokens <= 640
    sx, sy = img.width / first.width, img.height / first.height
    p = ergo.parse(f"<zoom>[0, 0, {first.width / 2}, {first.height / 2}]</zoom>", CS)
    assert ergo.original_box(p, img, CS, first) == (0, 0, 1000, 500)
    # a tiny box grows to the 100 px minimum around its centre; a box past the edge is clamped
    p = ergo.parse(f"<zoom>[{first.width - 2}, 10, {first.width + 40}, 12]</zoom>", CS)
    l, t, r, b = ergo.original_box(p, img, CS, first)
    assert r == 2000 and b - t >= 100 and r - l >= 100
    wide = get_protocol("ergo", margin=0.5)
    p = wide.parse(f"<zoom>[{400 / sx}, {400 / sy}, {600 / sx}, {600 / sy}]</zoom>", CS)
    assert wide.original_box(p, img, CS, first) == (300, 300, 700, 700)


def test_ergo_forced_request_is_union_box():
    img = Image.new("RGB", (640, 480))
    ergo = get_protocol("ergo")
    first = ergo.first_view(img, ergo.geometry(Geometry()))
    p = ergo.parse(ergo.request_text(["0", "4"], CS, first, img), CS)
    assert p.kind == "request"
    assert ergo.original_box(p, img, CS, first) == pytest.approx((0, 0, 480, 360), abs=3)


def test_registry():
    assert protocol_from_dict(get_protocol("ergo", max_tokens=1280).to_dict()).max_tokens == 1280
    with pytest.raises(ProtocolError, match="known"):
        get_protocol("nope")


def test_awares_system_prompt_is_the_released_constant():
    s = get_protocol("awares").system_prompt(CS)
    assert s.startswith("You are a vision-language model that analyzes images and answers questions about them.")
    assert "{'0': 'top-left', '1': 'top-right', '2': 'bottom-left', '3': 'bottom-right', '4': 'center', " \
           "'5': 'top', '6': 'bottom', '7': 'left', '8': 'right', 'all': 'all'} ,otherwise" in s
