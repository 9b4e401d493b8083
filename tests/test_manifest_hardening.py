"""The manifest loader against edited, out-of-range, hostile and linked engines (issue #11).

Built on copies of the shipped demo engine (a few MB, no export): an edit after export is refused by the digest;
every numeric field the runtime reads is range-checked with a message naming it; hostile JSON (deep, huge, not
UTF-8, NaN, duplicate keys) is one typed line; files reached through a link or outside the folder are refused
without a word about the link's target; and a property-based fuzz holds that the loader raises nothing but
EdgeAwaresError subclasses.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from edge_awares.api import DEMO_ENGINE
from edge_awares.errors import ConfigError, EdgeAwaresError, EngineError, EngineIntegrityError
from edge_awares.manifest import (DIGEST_COVERS, MANIFEST, MAX_MANIFEST_BYTES, Manifest, canonical, load_manifest, upgrade,
                                  seal, write_manifest)
from edge_awares.views import Geometry

pytestmark = pytest.mark.skipif(not (DEMO_ENGINE / MANIFEST).is_file(), reason="no shipped demo engine")

BASE = json.loads((DEMO_ENGINE / MANIFEST).read_text()) if (DEMO_ENGINE / MANIFEST).is_file() else {}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AWARES_CACHE", str(tmp_path / "cache"))  # verification stamps stay in the test


@pytest.fixture
def engine(tmp_path) -> Path:
    """A full copy of the demo engine (files included)."""
    return shutil.copytree(DEMO_ENGINE, tmp_path / "engine")


@pytest.fixture
def bare(tmp_path) -> Path:
    """A folder holding only manifest.json: enough for load_manifest(check_files=False)."""
    root = tmp_path / "bare"
    root.mkdir()
    return root


def _write(root: Path, data, sealed: bool = True) -> None:
    (root / MANIFEST).write_text(json.dumps(seal(data) if sealed else data))


def _set(data: dict, path: str, value) -> dict:
    """`data` (a copy) with the field at dotted `path` set to `value`; a value of DELETE removes the field."""
    data = copy.deepcopy(data)
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for k in parents:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# -- 1. the digest ---------------------------------------------------------------------------------------

def test_the_shipped_demo_engine_is_sealed():
    m = load_manifest(DEMO_ENGINE, check_files=False)
    assert m.data["digest"]["covers"] == DIGEST_COVERS
    assert set(m.data) - {"digest"} == set(upgrade(BASE)) - {"digest"}


@pytest.mark.parametrize("path, value", [
    ("geometry.max_pixels", 1000 * 28 * 28),
    ("geometry.image_mean.0", 0.5),
    ("model.vocab_size", 1000),
    ("model.num_kv_heads", 3),
    ("special_tokens.<|im_end|>", 3),
    ("generation.max_new_tokens", 4096),
    ("generation.max_crop_turns", 3),
    ("crop_set.crops.0.box", [0.0, 0.0, 0.6, 0.6]),
    ("files.vision.onnx.sha256", "0" * 64),
    ("graphs.decoder.kv.dtype", "float16"),
    ("provenance.source_checkpoint", "somewhere/else"),
    ("verification.bounds.top1_agreement", 0.0),
    ("protocol", {"name": "awares"}),
])
def test_an_edit_after_export_is_refused(engine, path, value):
    data = json.loads((engine / MANIFEST).read_text())
    if path.startswith("files.vision.onnx."):  # a dotted file name
        data["files"]["vision.onnx"]["sha256"] = value
    elif path.startswith("special_tokens."):
        data["special_tokens"]["<|im_end|>"] = value
    else:
        data = _set(data, path, value)
    _write(engine, data, sealed=False)  # the stale digest stays
    with pytest.raises(EngineIntegrityError, match=r"edited after export \(its digest does not match\); re-export"):
        load_manifest(engine, check_files=False)


def test_layout_on_disk_is_free_content_is_not(engine):
    data = json.loads((engine / MANIFEST).read_text())
    (engine / MANIFEST).write_text(json.dumps(data, indent=4, sort_keys=True))  # the same content, re-laid out
    load_manifest(engine)
    data["digest"] = dict(data["digest"], covers="whatever")
    _write(engine, data, sealed=False)
    with pytest.raises(EngineIntegrityError, match="digest = .* is malformed"):
        load_manifest(engine)


@pytest.mark.parametrize("digest", [DELETE, None, "abc", {"sha256": "xyz", "covers": DIGEST_COVERS},
                                    {"sha256": "A" * 64, "covers": DIGEST_COVERS}, {"covers": DIGEST_COVERS}, []])
def test_a_missing_or_malformed_digest_is_refused(bare, digest):
    data = dict(BASE)
    if digest is DELETE:
        del data["digest"]
    else:
        data["digest"] = digest
    _write(bare, data, sealed=False)
    with pytest.raises(EngineIntegrityError, match="carries no digest|malformed") as e:
        load_manifest(bare, check_files=False)
    _one_line(e.value)


def test_write_manifest_seals_without_changing_its_argument(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    data = {k: v for k, v in upgrade(BASE).items() if k != "digest"}  # the writer writes the current schema only
    before = copy.deepcopy(data)
    write_manifest(root, data)
    assert data == before and "digest" not in data
    m = load_manifest(root, check_files=False)
    assert {k: v for k, v in m.data.items() if k != "digest"} == before
    assert canonical(m.data) == canonical(before)
    assert not list(root.glob(".*tmp"))  # the temporary file is gone


def test_a_schema_1_manifest_is_read_as_the_onnx_backend_it_means():
    """The shipped demo engine was sealed as schema 1: its digest is checked as written, then it reads as schema 2."""
    assert BASE["schema_version"] == 1 and "backends" not in BASE
    m = load_manifest(DEMO_ENGINE, check_files=False)
    assert m.data["schema_version"] == 2 and m.backends == ["onnx"] and m.backend == "onnx"
    assert m.entry == {k: BASE[k] for k in ("precision", "graphs", "verification")}
    assert not {"precision", "graphs", "verification"} & set(m.data)
    with pytest.raises(EngineError, match="holds no 'gguf' backend; it holds onnx"):
        m.select("gguf")


def test_a_resealed_legal_edit_loads(bare):
    _write(bare, _set(BASE, "provenance.source_checkpoint", "moved"))
    assert load_manifest(bare, check_files=False).data["provenance"]["source_checkpoint"] == "moved"


# -- 2. every numeric field the runtime reads, range-checked -----------------------------------------------

RANGES = [
    # geometry (edge_awares/views.py GEOMETRY_LIMITS)
    ("geometry.patch_size", 0, r"geometry\.patch_size = 0 is out of range; legal: 1\.\.64"),
    ("geometry.patch_size", 65, r"geometry\.patch_size = 65 is out of range; legal: 1\.\.64"),
    ("geometry.patch_size", True, r"geometry\.patch_size = True is not an integer"),
    ("geometry.patch_size", 14.0, r"geometry\.patch_size = 14\.0 is not an integer"),
    ("geometry.patch_size", "14", r"geometry\.patch_size = '14' is not an integer"),
    ("geometry.patch_size", DELETE, r"lacks field geometry\.patch_size"),
    ("geometry.merge_size", 0, r"geometry\.merge_size = 0 is out of range; legal: 1\.\.8"),
    ("geometry.temporal_patch_size", 17, r"geometry\.temporal_patch_size = 17 is out of range; legal: 1\.\.16"),
    ("geometry.min_pixels", -1, r"geometry\.min_pixels = -1 is out of range"),
    ("geometry.max_pixels", 1 << 30, r"geometry\.max_pixels = 1073741824 is out of range"),
    ("geometry.max_pixels", 1000, r"geometry\.max_pixels = 1000 is below geometry\.min_pixels"),
    ("geometry.lowres_scale", 0, r"geometry\.lowres_scale = 0 is out of range; legal: over 0 up to 1"),
    ("geometry.lowres_scale", 1.5, r"geometry\.lowres_scale = 1\.5 is out of range"),
    ("geometry.lowres_scale", "0.5", r"geometry\.lowres_scale = '0\.5' is not a number"),
    ("geometry.image_std", [0.2, 0.0, 0.2], r"geometry\.image_std\[1\] = 0\.0 is out of range"),
    ("geometry.image_std", [0.2, -1, 0.2], r"geometry\.image_std\[1\] = -1 is out of range"),
    ("geometry.image_mean", [0.5, 0.5], r"geometry\.image_mean = .* is not 3 numbers"),
    ("geometry.image_mean", [0.5, 2.0, 0.5], r"geometry\.image_mean\[1\] = 2\.0 is out of range; legal: 0\.\.1"),
    ("geometry.image_mean", [0.5, None, 0.5], r"geometry\.image_mean\[1\] = None is not a number"),
    # model
    ("model.hidden_size", 0, r"model\.hidden_size = 0 is out of range"),
    ("model.hidden_size", "192", r"model\.hidden_size = '192' is not an integer"),
    ("model.vocab_size", -5, r"model\.vocab_size = -5 is out of range"),
    ("model.vocab_size", 1 << 23, r"model\.vocab_size = 8388608 is out of range"),
    ("model.num_layers", 0, r"model\.num_layers = 0 is out of range; legal: 1\.\.1024"),
    ("model.num_heads", 2000, r"model\.num_heads = 2000 is out of range"),
    ("model.num_kv_heads", 4, r"model\.num_kv_heads = 4 does not divide model\.num_heads = 6"),
    ("model.num_kv_heads", False, r"model\.num_kv_heads = False is not an integer"),
    ("model.head_dim", 31, r"model\.head_dim = 31 is odd"),
    ("model.head_dim", 4096, r"model\.head_dim = 4096 is out of range"),
    ("model.head_dim", DELETE, r"lacks field model\.head_dim"),
    ("model.parameters", -1, r"model\.parameters = -1 is out of range"),
    ("model.tied_embeddings", "yes", r"model\.tied_embeddings = 'yes' is not true or false"),
    ("model.vision", DELETE, r"lacks field model\.vision"),
    ("model.vision.window_size", 100, r"model\.vision\.window_size = 100 is not a multiple of patch_size x merge_size = 28"),
    ("model.vision.window_size", 0, r"model\.vision\.window_size = 0 is out of range; legal: 28\.\.4096"),
    ("model.vision.window_patches", 10, r"model\.vision\.window_patches = 10 differs from"),
    ("model.vision.in_features", 1000, r"model\.vision\.in_features = 1000 differs from"),
    ("model.vision.patch_size", 16, r"model\.vision\.patch_size = 16 differs from geometry\.patch_size = 14"),
    ("model.vision.merge_size", 0, r"model\.vision\.merge_size = 0 is out of range"),
    ("model.vision.num_heads", 5, r"model\.vision\.num_heads = 5 does not divide model\.vision\.hidden_size = 128"),
    ("model.vision.num_heads", 0, r"model\.vision\.num_heads = 0 is out of range"),
    ("model.vision.hidden_size", DELETE, r"lacks field model\.vision\.hidden_size"),
    ("model.vision.out_hidden_size", 100, r"model\.vision\.out_hidden_size = 100 differs from model\.hidden_size"),
    ("model.vision.fullatt_block_indexes", [7], r"fullatt_block_indexes\[0\] = 7 is out of range; legal: 0\.\.3"),
    ("model.vision.depth", 0, r"model\.vision\.depth = 0 is out of range"),
    # generation limits (edge_awares/api.py LIMITS)
    ("generation.max_new_tokens", 0, r"generation\.max_new_tokens = 0 is out of range; legal: 1\.\.65536"),
    ("generation.max_new_tokens", 1 << 17, r"generation\.max_new_tokens = 131072 is out of range"),
    ("generation.max_new_tokens", None, r"generation\.max_new_tokens = None is not an integer"),
    ("generation.max_context", 10, r"generation\.max_context = 10 is out of range; legal: 64\.\.1048576"),
    ("generation.max_crop_turns", 17, r"generation\.max_crop_turns = 17 is out of range; legal: 0\.\.16"),
    ("generation.max_crop_turns", -1, r"generation\.max_crop_turns = -1 is out of range"),
    ("generation.temperature", -1.0, r"generation\.temperature = -1\.0 is out of range"),
    ("generation.stop_tokens", ["<nope>"], r"stop_tokens names '<nope>', which special_tokens does not hold"),
    ("generation.stop_tokens", "<|im_end|>", r"generation\.stop_tokens = .* is not a list of names"),
    # crop set
    ("crop_set.min_side", 0, r"crop set .*crop_set\.min_side = 0 is out of range"),
    ("crop_set.crops.0.box", [0.0, 0.0, 2.0, 1.0], r"crop_set\.crops\[0\]\.box\[2\] = 2\.0 is out of range"),
    ("crop_set.crops.0.box", [0.0, 0.0, 0.5], r"crop_set\.crops\[0\]\.box = .* is not 4 numbers"),
    ("crop_set.crops.0.box", [0.5, 0.0, 0.4, 1.0], r"crop set .*invalid normalized box"),
    ("crop_set.crops.0.id", 0, r"crop_set\.crops\[0\]\.id = 0 is not a string"),
    ("crop_set.crops", {"0": 1}, r"crop_set\.crops = .* is not a list"),
    # protocol options (the token cap of ergo's views)
    ("protocol", {"name": "ergo", "max_tokens": 0}, r"protocol\.max_tokens = 0 is out of range; legal: 1\.\.16384"),
    ("protocol", {"name": "ergo", "margin": 2}, r"protocol\.margin = 2 is out of range"),
    ("protocol", {"name": "ergo", "max_tokens": 2}, r"ergo protocol's view geometry is invalid"),
    ("protocol", {"name": ["tool_call"]}, r"protocol \['tool_call'\] is unknown"),
    ("protocol", {"name": "tool_call", "colour": "red"}, r"protocol options in manifest are invalid"),
    # graph io names and the KV layout
    ("graphs.vision.inputs", [1, 2], r"graphs\.vision\.inputs = \[1, 2\] is not a list of names"),
    ("graphs.vision.inputs", ["a", "a"], r"graphs\.vision\.inputs names one entry twice"),
    ("graphs.decoder.outputs", "logits", r"graphs\.decoder\.outputs = 'logits' is not a list of names"),
    ("graphs.vision.data_files", [["x"]], r"graphs\.vision\.data_files = .* is not a list of names"),
    ("graphs.decoder.kv.past", ["past_key_values.0.key"], r"kv\.past holds 1 names; legal: 2 x model\.num_layers = 8"),
    ("graphs.decoder.kv.layout", "BSNH", r"kv\.layout = 'BSNH' is not one the runtime reads; legal: one of 'BNSH'"),
    ("graphs.decoder.kv.dtype", "int8", r"kv\.dtype = 'int8' is not one the runtime reads"),
    ("graphs.decoder.kv.shared_buffer", 1, r"kv\.shared_buffer = 1 is not true or false"),
    ("graphs.decoder.embeds_dtype", "bfloat16", r"embeds_dtype = 'bfloat16' is not one the runtime reads"),
    # the token table
    ("graphs.embeddings.shape", [949, 100], r"embeddings\.shape = \[949, 100\] is not \[model\.vocab_size"),
    ("graphs.embeddings.shape", [949.0, 192.0], r"embeddings\.shape = .* is not \[model\.vocab_size"),
    ("graphs.embeddings.dtype", "float64", r"embeddings\.dtype = 'float64' is not one the runtime reads"),
    ("graphs.embeddings.dtype", "float32", r"a \[949, 192\] float32 table there needs 728832 bytes"),
    ("graphs.embeddings.offset", 1 << 30, r"embeddings\.offset = 1073741824 is out of range; legal: 0\.\.364544"),
    ("graphs.embeddings.offset", 1000, r"embeddings\.offset = 1000: a \[949, 192\] float16 table"),
    ("graphs.embeddings.offset", -1, r"embeddings\.offset = -1 is out of range"),
]


@pytest.mark.parametrize("path, value, match", RANGES, ids=[f"{p}={v!r}"[:60] for p, v, _ in RANGES])
def test_every_field_is_range_checked_naming_it(bare, path, value, match):
    _write(bare, _set(BASE, path, value))
    with pytest.raises(EngineError, match=match) as e:
        load_manifest(bare, check_files=False)
    msg = _one_line(e.value)
    assert msg.startswith(f"{bare}: ")


@pytest.mark.parametrize("token, value, match", [
    ("<|im_end|>", 949, r"special_tokens\['<\|im_end\|>'\] = 949 is out of range; legal: 0\.\.948"),
    ("<|im_end|>", -1, r"special_tokens\['<\|im_end\|>'\] = -1 is out of range"),
    ("<|im_end|>", "2", r"special_tokens\['<\|im_end\|>'\] = '2' is not an integer"),
    ("<|im_end|>", True, r"is not an integer"),
    ("", 5, r"special_tokens has a key of 0 characters"),
])
def test_special_tokens_lie_in_the_vocabulary(bare, token, value, match):
    data = copy.deepcopy(BASE)
    data["special_tokens"][token] = value
    _write(bare, data)
    with pytest.raises(EngineError, match=match):
        load_manifest(bare, check_files=False)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f["vision.onnx"].update(bytes=-1), r"files\['vision\.onnx'\]\.bytes = -1 is out of range"),
    (lambda f: f["vision.onnx"].update(bytes=1 << 43), r"files\['vision\.onnx'\]\.bytes = 8796093022208 is out"),
    (lambda f: f["vision.onnx"].update(bytes="12"), r"files\['vision\.onnx'\]\.bytes = '12' is not an integer"),
    (lambda f: f["vision.onnx"].update(sha256="xyz"), r"files\['vision\.onnx'\]\.sha256 = 'xyz' is not a sha256"),
    (lambda f: f.update({"a//b": f["vision.onnx"]}), "unsafe file path 'a//b'"),
    (lambda f: f.update({"./a": f["vision.onnx"]}), "unsafe file path"),
    (lambda f: f.update({"a\0b": f["vision.onnx"]}), "unsafe file path"),
    (lambda f: f.update({"x" * 300: f["vision.onnx"]}), "unsafe file path"),
    (lambda f: f.update({"/etc/passwd": f["vision.onnx"]}), "unsafe file path"),
    (lambda f: f.update({MANIFEST: f["vision.onnx"]}), "unsafe file path 'manifest.json'"),
])
def test_file_entries_are_checked(bare, edit, match):
    data = copy.deepcopy(BASE)
    edit(data["files"])
    _write(bare, data)
    with pytest.raises(EngineError, match=match):
        load_manifest(bare, check_files=False)


def test_geometry_from_dict_checks_types_and_ranges():
    g = Geometry(max_pixels=123 * 28 * 28)
    assert Geometry.from_dict(g.to_dict()) == g
    with pytest.raises(ConfigError, match=r"geometry\.patch_size = 0 is out of range; legal: 1\.\.64"):
        Geometry.from_dict({"patch_size": 0})
    with pytest.raises(ConfigError, match="is not an integer"):
        Geometry.from_dict({"merge_size": True})
    with pytest.raises(ConfigError, match=r"image_std\[0\] = nan is out of range"):
        Geometry.from_dict({"image_std": [float("nan"), 0.2, 0.2]})
    with pytest.raises(ConfigError, match="not a mapping"):
        Geometry.from_dict([1, 2])


def test_tensorrt_profiles_refuse_a_bad_geometry_typed(tmp_path):
    from edge_awares.runtimes.onnx import tensorrt_options

    assert tensorrt_options(BASE, tmp_path)["trt_profile_max_shapes"]
    with pytest.raises(ConfigError, match=r"geometry\.merge_size = 0"):
        tensorrt_options(_set(BASE, "geometry.merge_size", 0), tmp_path)


# -- 3. hostile JSON ----------------------------------------------------------------------------------

def _valid_text() -> str:
    return json.dumps(BASE)


HOSTILE = [
    ("deep array", lambda: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep object", lambda: '{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ("unclosed deep", lambda: "[" * 100_000, "nested too deeply"),
    ("NaN", lambda: _valid_text().replace('"temperature": 0.0', '"temperature": NaN'), "NaN is not a number"),
    ("Infinity", lambda: _valid_text().replace('"temperature": 0.0', '"temperature": Infinity'), "Infinity is not"),
    ("-Infinity", lambda: _valid_text().replace('"temperature": 0.0', '"temperature": -Infinity'), "-Infinity is not"),
    ("overflowing float", lambda: _valid_text().replace('"temperature": 0.0', '"temperature": 1e999'),
     "overflows a float"),
    ("huge integer", lambda: _valid_text().replace('"max_new_tokens": 64', '"max_new_tokens": ' + "9" * 5000),
     "an integer of 5000 digits"),
    ("duplicate key", lambda: _valid_text().replace('"precision": "int8"', '"precision": "int8", "precision": "fp32"'),
     "key 'precision' appears twice"),
    ("duplicate nested key", lambda: _valid_text().replace('"patch_size": 14,', '"patch_size": 14, "patch_size": 1,', 1),
     "key 'patch_size' appears twice"),
    ("not JSON", lambda: "{not json", "unreadable manifest"),
    ("empty", lambda: "", "unreadable manifest"),
    ("a list", lambda: "[1, 2, 3]", "not a JSON object"),
    ("a string", lambda: '"edge-awares-engine"', "not a JSON object"),
    ("null", lambda: "null", "not a JSON object"),
]


@pytest.mark.parametrize("text, match", [(t, m) for _, t, m in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_json_is_one_typed_line(bare, text, match):
    (bare / MANIFEST).write_text(text())
    with pytest.raises(EngineError, match=match) as e:
        load_manifest(bare, check_files=False)
    _one_line(e.value)


@pytest.mark.parametrize("raw, match", [
    (b"\xff\xfe{\x00}\x00", "not UTF-8 text"),
    (b'{"format": "edge-awares-engine", "x": "\xc3\x28"}', "not UTF-8 text"),
    (b"\xef\xbb\xbf" + json.dumps(BASE).encode(), "unreadable manifest"),  # a UTF-8 byte-order mark
])
def test_non_utf8_manifest_is_refused(bare, raw, match):
    (bare / MANIFEST).write_bytes(raw)
    with pytest.raises(EngineError, match=match) as e:
        load_manifest(bare, check_files=False)
    _one_line(e.value)


def test_nesting_within_the_parser_limit_is_still_bounded(bare):
    deep = 1
    for _ in range(40):
        deep = [deep]
    _write(bare, _set(BASE, "provenance.deep", deep))
    with pytest.raises(EngineError, match=r"nests deeper than 32 levels \(at provenance\.deep"):
        load_manifest(bare, check_files=False)


def test_huge_manifest_is_refused_before_reading(bare):
    with open(bare / MANIFEST, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: no 16 MiB written
    with pytest.raises(EngineError, match=r"is 16777217 bytes; legal: at most 16777216"):
        load_manifest(bare, check_files=False)


def test_huge_string_value_is_not_echoed(bare):
    _write(bare, _set(BASE, "family", "x" * 1_000_000))
    with pytest.raises(EngineError, match="model family 'xxx") as e:
        load_manifest(bare, check_files=False)
    _one_line(e.value)


def test_manifest_that_is_not_a_regular_file(bare):
    (bare / MANIFEST).mkdir()
    with pytest.raises(EngineError, match="manifest.json is not a regular file"):
        load_manifest(bare)


# -- 4. links and the folder boundary -----------------------------------------------------------------

def _move_tokenizer_into(engine: Path, sub: str) -> None:
    """List the tokenizer as sub/tokenizer.json (a real folder), re-sealed: a legal engine."""
    data = json.loads((engine / MANIFEST).read_text())
    (engine / sub).mkdir()
    (engine / "tokenizer.json").rename(engine / sub / "tokenizer.json")
    data["files"][f"{sub}/tokenizer.json"] = data["files"].pop("tokenizer.json")
    data["tokenizer"] = f"{sub}/tokenizer.json"
    _write(engine, data)


def test_a_listed_file_in_a_real_subfolder_loads(engine):
    _move_tokenizer_into(engine, "sub")
    m = load_manifest(engine)
    assert m.tokenizer_path() == engine / "sub" / "tokenizer.json"


def test_an_intermediate_directory_link_is_refused_without_describing_its_target(engine, tmp_path):
    _move_tokenizer_into(engine, "sub")
    outside = tmp_path / "outside"
    shutil.move(str(engine / "sub"), outside)
    (outside / "tokenizer.json").write_bytes(b"x" * 12345)  # another size: must not be reported
    os.symlink(outside, engine / "sub")
    for check in (True, False):
        with pytest.raises(EngineIntegrityError, match=r"'sub/tokenizer.json' is reached through a symbolic link "
                                                       r"\('sub'\)") as e:
            load_manifest(engine, check_files=check).tokenizer_path()
        msg = _one_line(e.value)
        assert "12345" not in msg and str(outside) not in msg


def test_a_link_to_etc_is_refused(engine):
    data = json.loads((engine / MANIFEST).read_text())
    data["files"]["sys/hostname"] = {"sha256": "0" * 64, "bytes": 1}
    _write(engine, data)
    os.symlink("/etc", engine / "sys")
    with pytest.raises(EngineIntegrityError, match=r"reached through a symbolic link \('sys'\)") as e:
        load_manifest(engine)
    assert "/etc" not in str(e.value)


def test_a_linked_last_component_is_refused_without_its_size(engine, tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"y" * 54321)
    (engine / "tokenizer.json").unlink()
    os.symlink(target, engine / "tokenizer.json")
    with pytest.raises(EngineIntegrityError, match="'tokenizer.json' is a symbolic link") as e:
        load_manifest(engine)
    assert "54321" not in str(e.value) and str(target) not in str(e.value)


def test_a_linked_manifest_is_refused(engine, tmp_path):
    real = tmp_path / "elsewhere.json"
    shutil.move(str(engine / MANIFEST), real)
    os.symlink(real, engine / MANIFEST)
    with pytest.raises(EngineIntegrityError, match="manifest.json is a symbolic link") as e:
        load_manifest(engine)
    assert str(real.stat().st_size) not in str(e.value) and str(real) not in str(e.value)
    (engine / MANIFEST).unlink()
    os.symlink(tmp_path / "nowhere.json", engine / MANIFEST)  # dangling
    with pytest.raises(EngineIntegrityError, match="symbolic link"):
        load_manifest(engine)


def test_a_fifo_is_refused_without_blocking(engine):
    (engine / "tokenizer.json").unlink()
    os.mkfifo(engine / "tokenizer.json")
    with pytest.raises(EngineIntegrityError, match="'tokenizer.json' is not a regular file"):
        load_manifest(engine)


def test_a_linked_engine_folder_itself_is_fine(engine, tmp_path):
    os.symlink(engine, tmp_path / "via-link")
    assert load_manifest(tmp_path / "via-link").precision == "int8"


def test_files_are_checked_again_when_opened(engine, tmp_path):
    """A folder changed after loading (or loaded unchecked) cannot hand the runtime a linked file."""
    m = load_manifest(engine)
    real = tmp_path / "vision.onnx.data"
    shutil.move(str(engine / "vision.onnx.data"), real)
    os.symlink(real, engine / "vision.onnx.data")
    m.path("vision")  # the main file is still fine
    with pytest.raises(EngineIntegrityError, match="'vision.onnx.data' is a symbolic link"):
        m.graph_files("vision")
    with pytest.raises(EngineError, match="is not a file this engine's manifest lists"):
        Manifest(engine, m.data).file("decoder.onnx.missing")


def test_the_runtime_opens_graph_data_files_through_the_check(engine, tmp_path):
    pytest.importorskip("onnxruntime")
    from edge_awares.runtimes.onnx import OnnxBackend

    real = tmp_path / "decoder.onnx.data"
    shutil.move(str(engine / "decoder.onnx.data"), real)
    os.symlink(real, engine / "decoder.onnx.data")
    with pytest.raises(EngineIntegrityError, match="'decoder.onnx.data' is a symbolic link"):
        OnnxBackend(engine, check_files=False)


# -- 5. property-based fuzz ---------------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the dev extra installs it; without it only the fuzz is skipped
    st = None


@pytest.mark.skipif(st is None, reason="pip install hypothesis (the dev extra) to fuzz the manifest loader")
def test_hypothesis_is_there_to_fuzz():
    assert st is not None


if st is not None:
    def _paths(tree, prefix=()):
        yield prefix
        if prefix[:1] in (("provenance",), ("verification",)):  # not read by the runtime: their top level only
            return
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from _paths(v, prefix + (k,))
        elif isinstance(tree, list):
            for i, v in enumerate(tree):
                yield from _paths(v, prefix + (i,))

    PATHS = [p for p in _paths({k: v for k, v in BASE.items() if k != "digest"}) if p]

    SCALARS = st.one_of(
        st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.integers(-3, 3000),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, -1, 1, 2, 3, 14, 28, 949, 2 ** 31, 2 ** 63, 10 ** 19, 0.0, -0.0, 0.5, 1e-9, 1e308,
                         float("nan"), float("inf"), -float("inf")]),
        st.text(max_size=12),
        st.sampled_from(["", "../x", "/etc/passwd", "a//b", "\x00", "BNSH", "float16", "float64", "ergo", "awares",
                         "tokenizer.json", "vision.onnx", "manifest.json", "all", "x" * 300]),
    )
    VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6), inner, max_size=4), max_leaves=6)

    def _mutate(data: dict, path: tuple, op: str, value):
        node = data
        for k in path[:-1]:
            try:
                node = node[k]
            except (KeyError, IndexError, TypeError):
                return data
        last = path[-1]
        if not isinstance(node, (dict, list)) or (isinstance(node, list) and (not isinstance(last, int) or last >= len(node))):
            return data
        if isinstance(node, dict) and last not in node and op != "set":
            return data
        current = node[last] if (isinstance(node, list) or last in node) else None
        if op == "delete":
            del node[last]
        elif op == "nudge" and isinstance(current, (int, float)) and not isinstance(current, bool):
            node[last] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else -current
        elif op == "retype":
            node[last] = (str(current) if not isinstance(current, str) else [current]) if current is not None else {}
        else:
            node[last] = value
        return data

    @st.composite
    def _mutations(draw):
        n = draw(st.integers(1, 4))
        return [(draw(st.sampled_from(PATHS)), draw(st.sampled_from(["set", "set", "delete", "nudge", "retype"])),
                 draw(VALUES)) for _ in range(n)]

    @pytest.fixture(scope="module")
    def fuzz_engine(tmp_path_factory):
        """One engine copy for every example (each rewrites its manifest); stamps go to the test's cache."""
        return shutil.copytree(DEMO_ENGINE, tmp_path_factory.mktemp("fuzz") / "engine")

    def _load_and_use(root: Path, check_files: bool, tmp: Path) -> None:
        """Load, then read what the runtime reads: a manifest that loads must give it only typed errors too."""
        from edge_awares.runtimes.onnx import tensorrt_options

        m = load_manifest(root, check_files=check_files)
        m.geometry(), m.crop_set(), m.protocol().geometry(m.geometry()), m.size_bytes()
        m.path("vision"), m.graph_files("decoder"), m.tokenizer_path(), m.path("embeddings")
        tensorrt_options(m, tmp)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
    @given(mutations=_mutations(), sealed=st.sampled_from([True, True, True, True, False]), check_files=st.booleans())
    def test_fuzzed_manifest_loads_or_raises_a_typed_error(fuzz_engine, tmp_path, mutations, sealed, check_files):
        data = copy.deepcopy({k: v for k, v in BASE.items() if k != "digest"})
        for path, op, value in mutations:
            data = _mutate(data, path, op, value)
        try:
            text = json.dumps(seal(data) if sealed else data)
        except ValueError:  # NaN or infinity: JSON literals the loader must refuse on its own
            text = json.dumps(data)
        (fuzz_engine / MANIFEST).write_text(text)
        try:
            _load_and_use(fuzz_engine, check_files, tmp_path)
        except EdgeAwaresError as e:
            _one_line(e)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(edits=st.lists(st.tuples(st.integers(0, 10 ** 9), st.sampled_from(["flip", "cut", "insert"]),
                                    st.binary(min_size=1, max_size=3)), min_size=1, max_size=3))
    def test_fuzzed_manifest_bytes_load_or_raise_a_typed_error(bare, edits):
        raw = bytearray(json.dumps(seal(BASE), indent=1).encode())
        for pos, op, blob in edits:
            pos %= len(raw) or 1
            if op == "flip":
                raw[pos] ^= blob[0] or 1
            elif op == "cut":
                del raw[pos:]
            else:
                raw[pos:pos] = blob
            if not raw:
                break
        (bare / MANIFEST).write_bytes(bytes(raw))
        try:
            load_manifest(bare, check_files=False)
        except EdgeAwaresError as e:
            _one_line(e)
