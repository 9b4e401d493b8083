"""`edge-awares serve` on a loopback port with the shipped demo engine, driven by the official `openai` client and by
raw HTTP: completions (plain and streamed), the loop's facts in the extension field, every class of bad request as
a 4xx in the API's error shape, and a full queue as 503 with Retry-After."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from edge_awares.api import demo_engine  # noqa: E402
from edge_awares.serve import ServeConfig, create_app  # noqa: E402

if demo_engine() is None:
    pytest.skip("this checkout has no shipped demo engine", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, cfg: ServeConfig, session=None):
        self.port = _free_port()
        self.app = create_app(cfg, session=session)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert time.time() - t0 < 30, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server():
    with _Server(ServeConfig()) as s:
        yield s


def _data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def _page(tmp_path_factory=None):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "examples" / "cards_b.png"


def _messages(question: str, url: str | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url or _data_uri(_page())}},
                                         {"type": "text", "text": question}]}]


def _post(server, body, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_the_openai_client_gets_the_answer_and_the_loops_facts(server):
    """The shipped engine answers the README's example: a code question fetches the card's quadrant."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["demo-engine"]
    q = json.loads(open(_page().with_name("cards_questions.jsonl")).readline())
    reply = client.chat.completions.create(model="demo-engine", messages=_messages(q["question"]), max_tokens=32)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    facts = reply.model_extra["edge_awares"]
    from edge_awares.api import open_session
    from edge_awares.images import load_image

    direct = open_session(engine=str(demo_engine())).run(load_image(str(_page())), q["question"])
    assert reply.choices[0].message.content == direct.answer  # the same loop as `ask`
    assert facts["crops"] == direct.crops and facts["rtr"] == pytest.approx(direct.rtr)
    assert reply.usage.prompt_tokens == sum(t["prefill_tokens"] for t in facts["turns"])
    assert reply.choices[0].finish_reason == "stop"


def test_streaming_sends_the_answer_as_it_decodes(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    question = "What is the code on the green card?"
    parts, last = [], None
    for chunk in client.chat.completions.create(model="demo-engine", messages=_messages(question), stream=True):
        last = chunk
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    whole = client.chat.completions.create(model="demo-engine", messages=_messages(question))
    assert "".join(parts) == whole.choices[0].message.content and whole.choices[0].message.content
    assert last.choices[0].finish_reason == "stop" and last.model_extra["edge_awares"]["crops"]


@pytest.mark.parametrize("body,status,param", [
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "no image here"}]}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400, "messages[0].content[0]"),
    ({"messages": _messages("q", "http://example.com/a.png")}, 400, "messages[0].content[0]"),
    ({"messages": _messages("q", "data:image/png;base64,@@@@")}, 400, "messages[0].content[0]"),
    ({"messages": _messages("q", "data:image/png;base64," + base64.b64encode(b"not an image").decode())}, 400,
     "messages[0].content[0]"),
    ({"messages": _messages("q", "file:///etc/passwd")}, 400, "messages[0].content[0]"),
    ({"messages": _messages("q"), "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": _messages("q"), "temperature": "hot"}, 400, "temperature"),
    ({"messages": _messages("q"), "stream": "yes"}, 400, "stream"),
    ({"messages": _messages("q"), "n": 3}, 400, "n"),
])
def test_every_bad_request_is_a_4xx_in_the_apis_error_shape(server, body, status, param):
    code, _, reply = _post(server, body)
    assert code == status and set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param and reply["error"]["message"]


def test_malformed_oversized_and_misrouted_requests(server):
    code, _, reply = _post(server, None, raw=b"{not json")
    assert code == 400 and "JSON" in reply["error"]["message"]
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(33 << 20))  # refused on its header, before a byte of the body is read
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    conn.close()
    req = urllib.request.Request(server.url + "/v1/nothing")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["code"] == "not_found"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["queue"]["running"] == 0


def test_file_urls_only_under_an_allowed_folder(tmp_path):
    import shutil

    inside = tmp_path / "pages"
    inside.mkdir()
    shutil.copy(_page(), inside / "p.png")
    with _Server(ServeConfig(allow_dirs=(str(inside),))) as s:
        code, _, reply = _post(s, {"messages": _messages("Which letter is on the green card?",
                                                         (inside / "p.png").as_uri())})
        assert code == 200 and reply["choices"][0]["message"]["content"]
        code, _, reply = _post(s, {"messages": _messages("q", (tmp_path / "outside.png").as_uri())})
        assert code == 403 and reply["error"]["type"] == "permission_error"


def test_a_full_queue_answers_503_with_retry_after():
    """One request running, none allowed to wait: the next is refused at once, and the first still completes."""
    from edge_awares.api import open_session

    session = open_session(engine=str(demo_engine()))
    gate = threading.Event()
    real = session.run

    def slow(*a, **kw):
        gate.wait(30)
        return real(*a, **kw)

    session.run = slow
    with _Server(ServeConfig(max_queue=0), session=session) as s:
        first = {}
        t = threading.Thread(target=lambda: first.update(r=_post(s, {"messages": _messages("Which letter is on "
                                                                                            "the green card?")})))
        t.start()
        while s.app.state.worker.running == 0:
            time.sleep(0.02)
        code, headers, reply = _post(s, {"messages": _messages("q")})
        assert code == 503 and headers.get("retry-after") == "1" and reply["error"]["code"] == "queue_full"
        gate.set()
        t.join(60)
        assert first["r"][0] == 200


def test_follow_ups_reuse_the_cached_prefix_and_health_reports_it(server):
    """A second question on the same image, then a follow-up in the same conversation: each prefills only its new
    text (the earlier prompt comes from the prefix cache), and answers as a fresh session with that history."""
    from edge_awares.api import open_session
    from edge_awares.images import load_image

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    q1, q2 = "Which letter is on the green card?", "What is the code on the green card?"
    first = client.chat.completions.create(model="demo-engine", messages=_messages(q1))
    again = client.chat.completions.create(model="demo-engine", messages=_messages(q1))
    t = again.model_extra["edge_awares"]["turns"][0]
    assert t["reused_tokens"] > 300 and t["prefill_tokens"] <= 2  # the whole prompt but its last token
    conversation = _messages(q1) + [{"role": "assistant", "content": first.choices[0].message.content},
                                    {"role": "user", "content": q2}]
    follow = client.chat.completions.create(model="demo-engine", messages=conversation)
    t = follow.model_extra["edge_awares"]["turns"][0]
    assert t["reused_tokens"] > 300 and t["prefill_tokens"] < 40  # the earlier answer and the new question only
    fresh = open_session(engine=str(demo_engine())).run(load_image(str(_page())), q2,
                                                         history=[(q1, first.choices[0].message.content)])
    assert follow.choices[0].message.content == fresh.answer
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        cache = json.loads(r.read())["cache"]
    assert cache["enabled"] and cache["hits"] >= 2 and 0 < cache["bytes"] <= cache["budget_bytes"]
    assert cache["reused_tokens"] > 600


def test_the_prefix_cache_counts_against_the_memory_budget():
    """The cache's whole budget is planned for at start (it fills over many requests): /health reports it among
    what the runtime holds, and a budget too small for engine + cache is refused before anything listens."""
    from edge_awares.errors import MemoryBudgetError

    with _Server(ServeConfig(cache_mb=64)) as s:
        with urllib.request.urlopen(s.url + "/health", timeout=10) as r:
            mem = json.loads(r.read())["memory"]
    assert mem["reserved"] == 64 << 20 and mem["planned_peak"] >= mem["weights"] + mem["reserved"]
    from runtimes.budget import process_rss

    # What this process holds now plus 256 MiB fits the demo engine (4 MiB) but not another 1 GiB of cache.
    budget = (process_rss() + (256 << 20)) / (1 << 30)
    with pytest.raises(MemoryBudgetError, match="prefix cache of 1024 MiB"):
        create_app(ServeConfig(cache_mb=1024, memory_budget=budget).validate())


def test_the_rtr_budget_per_request(server):
    code, _, reply = _post(server, {"messages": _messages("What is the code on the green card?"), "max_rtr": 0.3})
    facts = reply["edge_awares"]
    assert code == 200 and facts["max_rtr"] == 0.3 and facts["crops"] == [] and facts["budget_dropped"] == ["3"]
    assert facts["rtr"] <= 0.3
    code, _, reply = _post(server, {"messages": _messages("What is the code on the green card?"), "max_rtr": 0.5})
    assert code == 200 and reply["edge_awares"]["crops"] == ["3"] and reply["choices"][0]["message"]["content"]
    code, _, reply = _post(server, {"messages": _messages("q"), "max_rtr": -1})
    assert code == 400 and reply["error"]["param"] == "max_rtr"


def _slow_session(delay_s: float):
    """The shipped engine's session, sleeping before every sampled token (a long decode to interrupt)."""
    from edge_awares.api import open_session

    session = open_session(engine=str(demo_engine()))
    real = session.run

    def slow(*a, on_token=None, **kw):
        def tick(turn, tid):
            time.sleep(delay_s)
            if on_token is not None:
                on_token(turn, tid)
        return real(*a, on_token=tick, **kw)

    session.run = slow
    return session


def test_a_client_that_disconnects_mid_stream_frees_the_engine():
    import http.client

    with _Server(ServeConfig(), session=_slow_session(0.3)) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        body = json.dumps({"messages": _messages("What is the code on the green card?"), "stream": True,
                           "max_tokens": 64})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and r.readline().startswith(b"data: ")  # the first chunk arrived
        worker = s.app.state.worker
        t0 = time.time()
        while worker.running == 0 and time.time() - t0 < 10:  # the run starts on the worker thread
            time.sleep(0.02)
        assert worker.running == 1
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        t0 = time.time()
        while worker.running and time.time() - t0 < 10:
            time.sleep(0.05)
        assert worker.running == 0 and worker.cancelled == 1 and time.time() - t0 < 5
        code, _, reply = _post(s, {"messages": _messages("Which letter is on the green card?")})
        assert code == 200


def test_shutdown_lets_the_in_flight_request_finish():
    with _Server(ServeConfig(), session=_slow_session(0.05)) as s:
        done = {}
        t = threading.Thread(target=lambda: done.update(r=_post(s, {"messages": _messages(
            "What is the code on the green card?")})))
        t.start()
        while s.app.state.worker.running == 0:
            time.sleep(0.02)
        s.server.should_exit = True  # what SIGINT/SIGTERM set
        t.join(60)
        assert done["r"][0] == 200 and done["r"][2]["choices"][0]["message"]["content"]


def test_the_page_answers_and_draws_the_crops_in_a_real_browser(server):
    """GET / in headless Chromium (Debian's package, through its chromedriver): choose the example page, type the
    question, click Ask; the answer and the fetched crop's outline appear on the low-res view."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        browser.get(server.url + "/")
        assert browser.title == "edge-awares"
        browser.find_element(By.ID, "file").send_keys(str(_page()))
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "drop").text == "cards_b.png")
        browser.find_element(By.ID, "question").send_keys("What is the code on the green card?")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "answer").text not in ("", "…"))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        want = client.chat.completions.create(model="demo-engine",
                                              messages=_messages("What is the code on the green card?"))
        assert browser.find_element(By.ID, "answer").text == want.choices[0].message.content
        canvas = browser.find_element(By.ID, "overlay")
        assert canvas.get_attribute("data-boxes") == "1"  # the card's quadrant, outlined
        assert "crop 3" in browser.find_element(By.ID, "facts").text
        # the outline is on the canvas: a red pixel on the quadrant's top edge of the 112-px low-res view
        pixel = browser.execute_script(
            "const g = document.getElementById('overlay').getContext('2d');"
            "return Array.from(g.getImageData(80, 57, 1, 1).data);")
        assert pixel[:3] == [0xe6, 0x19, 0x4b]
        assert browser.find_element(By.ID, "turns").text.count("\n") >= 2  # header and both turns
    finally:
        browser.quit()


def test_a_request_past_its_timeout_is_a_504_and_an_oversized_image_a_413():
    with _Server(ServeConfig(timeout_s=0.3, max_image_bytes=1024), session=_slow_session(0.2)) as s:
        code, _, reply = _post(s, {"messages": _messages("What is the code on the green card?")})
        assert code == 413 and reply["error"]["code"] == "image_too_large"  # the example page is 1251 bytes
    with _Server(ServeConfig(timeout_s=0.3), session=_slow_session(0.2)) as s:
        code, _, reply = _post(s, {"messages": _messages("What is the code on the green card?")})
        assert code == 504 and reply["error"]["type"] == "timeout"
        worker = s.app.state.worker
        assert worker.running == 0 and worker.cancelled == 1  # the run was stopped, not left decoding
