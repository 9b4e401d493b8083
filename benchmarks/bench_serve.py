"""Load on `edge-awares serve` over loopback: N concurrent clients send M requests in all (issue #15).

    python benchmarks/bench_serve.py [--engine DIR] [--clients 4] [--requests 200] [--max-seconds 300]

Starts the real server as a subprocess on a free loopback port (the shipped engine by default), then runs a
mixed load drawn from a fixed seed: questions about the example card pages (kinds: a page's first request, a
question new to a page already seen, a repeat), about half of them a question already asked about that page (a prefix-cache hit when its prompt is still cached), a tenth of them follow-ups with the
earlier exchange in the conversation (its answer a placeholder: the plan is drawn before any reply), a twentieth of them bad requests (no image) that must come back as 400.
Reports throughput, p50/p95 latency (first question on a page vs the rest), the cache hit rate and reused
tokens (from /health), the server's peak RSS (VmHWM from /proc), and errors by kind; writes
benchmarks/results/serve.{md,json,png}. Bounded in count and time: it stops at --max-seconds.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGES = ["cards_a.png", "cards_b.png", "cards_c.png", "cards_d.png"]
COLOURS = ["red", "green", "blue", "orange", "purple", "pink"]
TEMPLATES = ["Which letter is on the {c} card?", "What is the code on the {c} card?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def data_uri(name: str) -> str:
    """The page as a data: URI: an example file, or "gen:K", card page K drawn by the project's generator."""
    if name.startswith("gen:"):
        import io

        from edge_awares.data.cards import make_card_sample

        buf = io.BytesIO()
        make_card_sample(4242, int(name[4:])).image.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        data = (ROOT / "examples" / name).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def plan(n: int, seed: int, n_pages: int = 4) -> list[dict]:
    """The request mix, fixed by `seed`."""
    rng = random.Random(seed)
    pages = PAGES + [f"gen:{k}" for k in range(max(0, n_pages - len(PAGES)))]
    asked: dict[str, list[tuple[str, str]]] = {}
    out = []
    for i in range(n):
        page = rng.choice(pages)
        u = rng.random()
        if u < 0.05:
            out.append({"kind": "bad", "body": {"messages": [{"role": "user", "content": "no image"}]}})
            continue
        seen = asked.setdefault(page, [])
        if seen and u < 0.55:
            q = rng.choice(seen)[0]
            kind = "repeat"
        else:
            q = rng.choice(TEMPLATES).format(c=rng.choice(COLOURS))
            # first: the page's first request (nothing of its image cached); new: a question not asked before on a
            # cached page (its text is prefilled); a question drawn again counts as a repeat.
            kind = "first" if not seen else "repeat" if q in {x for x, _ in seen} else "new"
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(page)}},
                                                 {"type": "text", "text": q}]}]
        if seen and u > 0.9:
            prev_q, prev_a = seen[-1]
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(page)}},
                                                     {"type": "text", "text": prev_q}]},
                        {"role": "assistant", "content": prev_a}, {"role": "user", "content": q}]
            kind = "follow-up"
        out.append({"kind": kind, "page": page, "question": q, "body": {"messages": messages, "max_tokens": 32}})
        seen.append((q, "?"))
    return out


def post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_load(a, cache_mb: float) -> dict:
    """One server (prefix cache budget `cache_mb`) under the planned load; its report."""
    port = free_port()
    cmd = [sys.executable, "-m", "edge_awares.cli", "serve", "--port", str(port), "--max-queue", str(a.max_queue),
           "--cache-mb", str(cache_mb)]
    if a.engine:
        cmd += ["--engine", a.engine]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() - t0 > 60:
                    raise SystemExit(server.stderr.read())
                time.sleep(0.1)
        requests = plan(a.requests, a.seed, a.pages)
        results: list[dict] = []
        lock = threading.Lock()
        cursor = iter(range(len(requests)))
        deadline = time.time() + a.max_seconds

        def client():
            while time.time() < deadline:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                r = requests[i]
                t = time.perf_counter()
                try:
                    status, reply = post(url, r["body"], timeout=max(1.0, deadline - time.time()))
                except OSError as e:
                    status, reply = -1, {"error": {"type": type(e).__name__}}
                ms = (time.perf_counter() - t) * 1e3
                turns = (reply.get("edge_awares") or {}).get("turns") or [{}]
                with lock:
                    results.append({"kind": r["kind"], "status": status, "ms": ms,
                                    "error": (reply.get("error") or {}).get("type"),
                                    "reused": turns[0].get("reused_tokens", 0),
                                    "prefilled": turns[0].get("prefill_tokens", 0)})

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            health = json.loads(r.read())
        rss = peak_rss(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    ok = [r for r in results if r["status"] == 200]
    lost = [r for r in results if r["kind"] != "bad" and r["status"] != 200]

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    by_kind = {}
    for kind in ("first", "new", "repeat", "follow-up"):
        ms = [r["ms"] for r in ok if r["kind"] == kind]
        pre = [r["prefilled"] for r in ok if r["kind"] == kind]
        by_kind[kind] = {"n": len(ms), "p50_ms": pct(ms, 0.5), "p95_ms": pct(ms, 0.95),
                         "median_prefilled_tokens": statistics.median(pre) if pre else None}
    return {"cache_mb": cache_mb, "clients": a.clients, "requests_planned": a.requests,
            "requests_sent": len(results), "wall_s": wall, "throughput_rps": len(results) / wall if wall else None,
            "p50_ms": pct([r["ms"] for r in ok], 0.5), "p95_ms": pct([r["ms"] for r in ok], 0.95),
            "by_kind": by_kind, "errors": dict(Counter(str(r["error"] or r["status"]) for r in results
                                                        if r["status"] != 200)),
            "accepted_lost_or_failed": len(lost),
            "bad_requests_answered_400": all(r["status"] == 400 for r in results if r["kind"] == "bad"),
            "cache": health.get("cache"), "queue": health.get("queue"), "server_peak_rss_bytes": rss,
            "engine": health.get("engine"), "cpu_threads": env["OMP_NUM_THREADS"], "latencies": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--cache-mb", type=float, default=256.0, help="the cached server's budget (compared with 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pages", type=int, default=24, help="distinct pages (the 4 examples, then generated card pages)")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    reports = [run_load(a, a.cache_mb), run_load(a, 0.0)]  # the same plan, with and without the prefix cache
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({"runs": [{k: v for k, v in r.items() if k != "latencies"}
                                                         for r in reports]}, indent=1))
    md = ["| prefix cache | requests | clients | wall s | req/s | p50 ms | p95 ms | cache hit rate | reused tokens "
          "| peak RSS MiB | errors | failed accepted |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        c = r["cache"] or {}
        md.append(f"| {r['cache_mb']:g} MiB | {r['requests_sent']} | {r['clients']} | {r['wall_s']:.1f} "
                  f"| {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} "
                  f"| {c.get('hit_rate') or 0:.2f} | {c.get('reused_tokens', 0)} "
                  f"| {(r['server_peak_rss_bytes'] or 0) / 2**20:.0f} | {r['errors'] or 'none'} "
                  f"| {r['accepted_lost_or_failed']} |")
    md += ["", "| prefix cache | kind | n | p50 ms | p95 ms | median prefilled tokens (turn 1) |",
           "|---|---|---|---|---|---|"]
    for r in reports:
        for kind, k in r["by_kind"].items():
            md.append(f"| {r['cache_mb']:g} MiB | {kind} | {k['n']} | {k['p50_ms'] or 0:.0f} | {k['p95_ms'] or 0:.0f} "
                      f"| {k['median_prefilled_tokens']} |")
    (out / "serve.md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
        for r in reports:
            ms = [x["ms"] for x in r["latencies"] if x["status"] == 200]
            ax.hist(ms, bins=40, alpha=0.6, label=f"prefix cache {r['cache_mb']:g} MiB")
        ax.set_xlabel("latency per request (ms)")
        ax.set_ylabel("requests")
        ax.set_title(f"edge-awares serve, {a.clients} clients, {a.requests} requests")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "serve.png")
        plt.close(fig)
    except ImportError:
        pass
    print("\n".join(md))
    return 0 if all(not r["accepted_lost_or_failed"] and r["bad_requests_answered_400"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
