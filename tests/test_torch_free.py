"""The runtime core imports and runs the whole session loop with torch and transformers made unimportable,
and asking for the torch backend then names the pip extra instead of failing with a traceback."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakes import import_blocker  # noqa: E402

SCRIPT = import_blocker("torch", "transformers", "tensorflow", "jax", "trl", "peft") + textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1]]
    import edge_awares, edge_awares.cli, edge_awares.session, edge_awares.views, edge_awares.protocols
    import edge_awares.chat, edge_awares.positions, edge_awares.images, edge_awares.models, edge_awares.api
    import edge_awares.runtimes, edge_awares.tiny, edge_awares.serve
    from edge_awares.crops import AWARES_CROPS
    from edge_awares.protocols import get_protocol
    from edge_awares.session import Session
    from edge_awares.tiny import make_tokenizer
    from edge_awares.tokenizer import TextTokenizer
    from edge_awares.views import Geometry
    from fakes import ScriptedBackend
    from conftest import make_doc
    tok = TextTokenizer(make_tokenizer())
    be = ScriptedBackend(tok, ['<tool_call>{"name": "crop", "arguments": {"regions": ["2"]}}</tool_call>', "7"])
    r = Session(be, tok, get_protocol("tool_call"), AWARES_CROPS, Geometry()).run(make_doc(640, 480), "q")
    assert r.answer == "7" and r.crops == ["2"], r
    from edge_awares.api import demo_engine
    if demo_engine() is not None:  # the server's app over the shipped engine, built without torch
        from edge_awares.serve import ServeConfig, create_app
        create_app(ServeConfig())
    leaked = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
    assert not leaked, leaked
    from edge_awares.cli import main
    sys.exit(main(["ask", sys.argv[2], "q", "--model", sys.argv[3]]))
""")


def test_runtime_core_is_torch_free(tmp_path):
    img = tmp_path / "d.png"
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_doc

    make_doc(300, 200).save(img)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "tokenizer.json").write_text("{}")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "tests"), str(img), str(ckpt)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "pip install 'edge-awares[torch]'" in out.stderr and "Traceback" not in out.stderr
