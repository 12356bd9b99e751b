"""HTTP latency floor with wrk: qsim against the peer a desk would write, side by side in one run.

    python -m bench.wrk_bench [--duration 15] [--rounds 2] [--concurrency 1 16] [--qsim-rev REV ...] [--json out.json]

Starts the services on free loopback ports and measures them with wrk (the Debian package; `make
bench-wrk` installs it), alternating cell by cell (qsim, peer-t2, peer-t1, qsim, peer-t2, ...):

- qsim on its embedded defaults, started through docker/entrypoint.sh as `make run` starts it, with
  only its storage moved into a temporary directory (SQLite database and index; `QSIM_DATABASE_URL`,
  `QSIM_INDEX_DIR`, `QSIM_METRICS_DIR`), `QSIM_ACCESS_LOG=false`, `QSIM_LOG_LEVEL=WARNING`; no
  other QSIM_* variable of the caller's environment and no .env file reaches it. First start: it
  migrates, seeds the 10,003 bundled BANKING77 questions and builds its index. Its code is the
  checkout as it is, or with `--qsim-rev REV` a `git archive` of that revision (a baseline on
  committed code while the checkout holds work in progress; the checkout is not touched). Several
  revisions (`--qsim-rev A B`) run as several services in the same rounds: before and after a change
  under the same load. `--qsim-workers 1 2` runs each revision once per worker count as well
  (QSIM_WORKERS; the default is one).
- the peer, `bench/peer_service.py`: FastAPI + all-MiniLM-L6-v2 + faiss.IndexFlatIP over the same
  questions, one uvicorn worker (its corpus embeddings are cached, so only its first start ever
  encodes them). qsim keeps its default of one torch thread; the peer gets its best setting: by
  default two peers run side by side, one with a torch thread per core (torch's default) and one
  with one thread (`--peer-torch-threads`), because neither is best at every concurrency on a
  shared 2-core machine, and each target is computed against the better of them.

Every request is POST /questions/similar {"question", "limit"} with the BANKING77 test questions in
turn (bench/wrk_similar.lua), `wrk --latency`, one wrk thread for one connection and two for more;
wrk runs on the same cores as the services it measures and takes some of them. Reported per
service and concurrency: p50/p90/p99 (median over the rounds), requests/s (all requests over all
the rounds' seconds), errors (non-2xx responses plus socket errors), the load average, and the
ratios the issue's targets are stated in. Every service is stopped on the way out, on an error,
Ctrl-C or SIGTERM included.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import banking77

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "bench" / "wrk_similar.lua"
PATH = "/questions/similar"
TARGET_P50_RATIO = 0.15  # qsim c=1 p50 <= 0.15 x the peer's
TARGET_RPS_RATIO = 10.0  # qsim c=16 requests/s >= 10 x the peer's
SAMPLE_QUESTIONS = 20  # checked through each service before the load, and how many results they get


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    log_path: Path
    ready_path: str = "/readyz"
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_seconds: float | None = None
    ready_body: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_file = self.log_path.open("wb")
        self.started_at = time.monotonic()
        # own session: a Ctrl-C in the terminal reaches this script, which stops the service itself
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}\n{self.log_tail()}")

    def poll_ready(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(self.base + self.ready_path, timeout=2) as response:
                if response.status == 200:
                    self.ready_seconds = time.monotonic() - self.started_at
                    self.ready_body.update(json.loads(response.read() or b"{}"))
                    return True
        except (OSError, ValueError):
            pass
        return False

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)  # the whole session: entrypoint.sh execs, but be sure
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    log(f"{self.name} did not stop after {sig.name}")
        with contextlib.suppress(ProcessLookupError, PermissionError):  # anything left in its process group
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
        self.log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])


def post_json(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"detail": error.read().decode(errors="replace")}


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
PERCENTILE_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$")


def parse_wrk(text: str) -> dict:
    """The figures of one `wrk --latency` run with wrk_similar.lua: p50/p90/p99 (ms) and requests/s
    from wrk's own report, error counts from the script's WRK_RESULT line."""
    figures: dict = {}
    in_distribution = False
    for line in text.splitlines():
        if line.strip().startswith("Latency Distribution"):
            in_distribution = True
            continue
        match = PERCENTILE_LINE.match(line)
        if in_distribution and match:
            figures[f"p{match.group(1).removesuffix('.000')}_ms"] = float(match.group(2)) * UNITS[match.group(3)]
            continue
        in_distribution = False
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(line.split(":", 1)[1])
        elif line.startswith("WRK_RESULT "):
            figures["script"] = json.loads(line.removeprefix("WRK_RESULT "))
    missing = [key for key in ("p50_ms", "p90_ms", "p99_ms", "rps", "script") if key not in figures]
    if missing:
        raise RuntimeError(f"could not read {', '.join(missing)} from wrk's output:\n{text}")
    script = figures["script"]
    figures["requests"] = script["requests"]
    figures["seconds"] = script["duration_us"] / 1e6
    figures["non2xx"] = script["non2xx"]
    figures["socket_errors"] = sum(script["socket_errors"].values())
    figures["errors"] = figures["non2xx"] + figures["socket_errors"]
    return figures


def run_wrk(wrk: str, service: Service, connections: int, seconds: float, bodies: Path, timeout: float) -> dict:
    threads = 1 if connections == 1 else min(2, connections)
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", f"--timeout={timeout:g}s",
               "-s", str(LUA), service.base + PATH, "--", str(bodies), str(threads)]
    load_before = loadavg()
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    service.check_alive()
    figures = parse_wrk(result.stdout)
    figures.update(service=service.name, connections=connections, wrk_threads=threads,
                   load_before=load_before, load_after=loadavg())
    return figures


def summarise(cells: list[dict]) -> dict:
    return {
        "service": cells[0]["service"],
        "connections": cells[0]["connections"],
        "wrk_threads": cells[0]["wrk_threads"],
        "torch_threads": cells[0]["torch_threads"],
        "rounds": len(cells),
        "requests": sum(c["requests"] for c in cells),
        "errors": sum(c["errors"] for c in cells),
        "non2xx": sum(c["non2xx"] for c in cells),
        "socket_errors": sum(c["socket_errors"] for c in cells),
        "rps": sum(c["requests"] for c in cells) / sum(c["seconds"] for c in cells),
        **{key: statistics.median(c[key] for c in cells) for key in ("p50_ms", "p90_ms", "p99_ms")},
    }


SOURCE_PATHS = ("app", "migrations", "models", "data", "docker", "pyproject.toml")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def qsim_source(rev: str | None, tmp: Path, n: int) -> tuple[Path, dict]:
    """Where qsim's code comes from: this checkout as it is, or (`--qsim-rev`) a `git archive` of a
    revision unpacked under `tmp`, so that a baseline is measured on committed code even while the
    checkout holds someone's work in progress. Nothing in the checkout is touched."""
    info: dict = {}
    try:
        info["head"] = git("rev-parse", "HEAD")
        info["uncommitted_in_checkout"] = git("status", "--porcelain", "--", *SOURCE_PATHS).splitlines()
    except (OSError, subprocess.CalledProcessError):
        info["head"] = None
    if rev is None:
        info["source"] = "checkout"
        return ROOT, info
    try:
        commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise RuntimeError(f"--qsim-rev {rev}: not a commit of {ROOT}") from None
    source = tmp / f"src-{n}"
    source.mkdir()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *SOURCE_PATHS],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(source)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    info.update(source="git archive", rev=rev, commit=commit)
    return source, info


def qsim_service(tmp: Path, port: int, source: Path, name: str, workers: int = 1) -> Service:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QSIM_")}
    if workers != 1:
        env["QSIM_WORKERS"] = str(workers)
    env.update({
        # the source first on the path, ahead of the editable install of the checkout
        "PYTHONPATH": os.pathsep.join([str(source), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "QSIM_HOST": "127.0.0.1",
        "QSIM_PORT": str(port),
        "QSIM_DATABASE_URL": f"sqlite:///{tmp / name / 'qsim.db'}",
        "QSIM_INDEX_DIR": str(tmp / name / "index"),
        "QSIM_METRICS_DIR": str(tmp / name / "metrics"),
        "QSIM_ACCESS_LOG": "false",
        "QSIM_LOG_LEVEL": "WARNING",
    })
    # cwd = the temporary directory, so that a developer's .env in the checkout does not apply
    (tmp / name).mkdir()
    return Service(name, [str(source / "docker" / "entrypoint.sh")], env, tmp / name, port, tmp / f"{name}.log")


def probe_source(service: Service) -> dict:
    """Which app package the service's interpreter imports with its environment (a check on
    --qsim-rev), and that code's default torch threads (QSIM_TORCH_THREADS, left as it is)."""
    code = ("import json, sys, app.core.config as c; json.dump({'app': sys.modules['app'].__file__, "
            "'torch_threads': c.Settings.model_fields['torch_threads'].default}, sys.stdout)")
    result = subprocess.run([sys.executable, "-c", code], cwd=service.cwd, env=service.env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"qsim's code does not import: {result.stderr.strip()}")
    return json.loads(result.stdout)


def peer_service(tmp: Path, port: int, torch_threads: int, cache_dir: Path | None) -> Service:
    command = [sys.executable, "-m", "bench.peer_service", "--host", "127.0.0.1", "--port", str(port),
               "--torch-threads", str(torch_threads)]
    if cache_dir:
        command += ["--cache-dir", str(cache_dir)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    name = f"peer-t{torch_threads}"
    return Service(name, command, env, ROOT, port, tmp / f"{name}.log")


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True)  # prints its usage too, exits 1
    return (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else "unknown"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}"


def print_report(report: dict) -> None:
    print(f"\nwrk: POST {PATH}, limit {report['limit']}, BANKING77 test questions in turn, "
          f"{report['duration_s']:g} s per cell, {report['rounds']} round(s), services alternating")
    print(f"date {report['date']}; {report['machine']['cpus']} CPUs ({report['machine']['cpu']}); "
          f"load average {report['load_start']} at start, {report['load_end']} at end")
    for qsim in report["qsim"]:
        code = qsim.get("code", {})
        if code.get("source") == "git archive":
            where = f"git archive of {code['rev']} ({code['commit'][:12]})"
        else:
            dirty = len(code.get("uncommitted_in_checkout") or [])
            where = f"the checkout at {str(code.get('head'))[:12]}" + (
                f" with {dirty} uncommitted path(s) under {', '.join(SOURCE_PATHS)}" if dirty else "")
        print(f"{qsim['name']}: {where}; {qsim.get('questions')} questions, model {qsim.get('model')} "
              f"({qsim.get('model_id')}), index {qsim.get('index_kind')} on {qsim.get('device')}, torch threads "
              f"{qsim.get('torch_threads')}, ready in {qsim['ready_seconds']:.1f} s (first start)")
    for peer in report["peers"]:
        print(f"{peer['name']}: {peer.get('questions')} questions, all-MiniLM-L6-v2 + faiss.IndexFlatIP, torch threads "
              f"{peer.get('torch_threads')}, ready in {peer['ready_seconds']:.1f} s")
    for service in (*report["qsim"], *report["peers"]):
        name = service["name"]
        sample = service.get("sample", {})
        print(f"{name}: of the first {sample.get('questions')} test questions {sample.get('answered')} got results "
              f"(median {sample.get('median_results')} results, limit {report['limit']})")
    print("\nEach cell:\n")
    print("| round | service | torch threads | connections | wrk threads | p50 ms | p90 ms | p99 ms | req/s | requests "
          "| errors | load before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in report["cells"]:
        print(f"| {c['round']} | {c['service']} | {c['torch_threads']} | {c['connections']} | {c['wrk_threads']} | "
              f"{fmt_ms(c['p50_ms'])} | {fmt_ms(c['p90_ms'])} | {fmt_ms(c['p99_ms'])} | {c['rps']:,.1f} | {c['requests']:,} | {c['errors']} | "
              f"{c['load_before'][0]} -> {c['load_after'][0]} |")
    print("\nSummary (percentiles: median over rounds; req/s: all requests over all seconds):\n")
    print("| service | torch threads | connections | p50 ms | p90 ms | p99 ms | req/s | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for s in report["summary"]:
        print(f"| {s['service']} | {s['torch_threads']} | {s['connections']} | {fmt_ms(s['p50_ms'])} | "
              f"{fmt_ms(s['p90_ms'])} | {fmt_ms(s['p99_ms'])} | {s['rps']:,.1f} | {s['errors']} |")
    print()
    for target in report["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        print(f"- {target['name']}: {target['value']} (target {target['target']}): {verdict}")


def is_qsim(name: str) -> bool:
    return name == "qsim" or name.startswith("qsim@")


def targets(summary: list[dict]) -> list[dict]:
    """The issue's targets for each qsim service, each against the best peer at that level (lowest
    p50 at c=1, most requests/s at c=16), so that qsim is held to the peer's best setting."""
    out = []
    qsims = list(dict.fromkeys(s["service"] for s in summary if is_qsim(s["service"])))

    def row(name: str, connections: int) -> dict | None:
        return next((s for s in summary if s["service"] == name and s["connections"] == connections), None)

    def peers(connections: int) -> list[dict]:
        return [s for s in summary if not is_qsim(s["service"]) and s["connections"] == connections]

    for name in qsims:
        if (mine := row(name, 1)) and peers(1):
            best = min(peers(1), key=lambda s: s["p50_ms"])
            ratio = mine["p50_ms"] / best["p50_ms"]
            out.append({"name": f"{name} c=1 p50 / {best['service']} c=1 p50 (the best peer)", "value": round(ratio, 3),
                        "target": f"<= {TARGET_P50_RATIO}", "met": ratio <= TARGET_P50_RATIO, "qsim": name,
                        "peer": best["service"]})
        if (mine := row(name, 16)) and peers(16):
            best = max(peers(16), key=lambda s: s["rps"])
            ratio = mine["rps"] / best["rps"]
            out.append({"name": f"{name} c=16 req/s / {best['service']} c=16 req/s (the best peer)",
                        "value": round(ratio, 2), "target": f">= {TARGET_RPS_RATIO:g}", "met": ratio >= TARGET_RPS_RATIO,
                        "qsim": name, "peer": best["service"]})
        errors = sum(s["errors"] for s in summary if s["service"] == name)
        out.append({"name": f"{name} errors (non-2xx + socket)", "value": errors, "target": "0", "met": errors == 0,
                    "qsim": name})
    return out


def wait_ready(services: list[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        pending = [s for s in pending if not s.poll_ready()]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:g} s: {', '.join(s.name for s in pending)}")
        time.sleep(0.2)
    for service in services:
        log(f"{service.name} on :{service.port} ready in {service.ready_seconds:.1f} s")


def check_answers(service: Service, questions: list[str], limit: int) -> None:
    """What the load will ask for: 200 with a result list. qsim returns only the matches within its
    calibrated rule, so some questions get none; the peer always returns `limit`."""
    counts = []
    for question in questions[:SAMPLE_QUESTIONS]:
        status, body = post_json(service.base + PATH, {"question": question, "limit": limit})
        if status != 200 or not isinstance(body.get("results"), list):
            raise RuntimeError(f"{service.name} answered {status} to {question!r}: {body}")
        counts.append(len(body["results"]))
    service.ready_body["sample"] = {"questions": len(counts), "answered": sum(1 for n in counts if n),
                                    "median_results": statistics.median(counts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk cell (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="cells per service and concurrency (default 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="wrk connections (default 1 16)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load per service and "
                        "concurrency before its cells (default 3)")
    parser.add_argument("--limit", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk's per-request timeout in seconds; a "
                        "request slower than that counts as a socket error (default 10)")
    parser.add_argument("--peer-torch-threads", type=int, nargs="+", default=None,
                        help="run one peer per torch thread count given, all measured in the same rounds; the "
                        "ratios use the best peer at each level (default: one thread per core, and one thread)")
    parser.add_argument("--peer-cache-dir", type=Path, default=None,
                        help="the peer's corpus-embedding cache (default: qsim's teacher cache)")
    parser.add_argument("--qsim-rev", nargs="+", default=None,
                        help="run qsim from this git revision (git archive into the temporary directory) instead "
                        "of the checkout as it is, e.g. HEAD while app/ has work in progress; several revisions run "
                        "side by side as qsim@REV")
    parser.add_argument("--qsim-workers", type=int, nargs="+", default=[1],
                        help="run each qsim revision with these worker counts (QSIM_WORKERS; default 1, the "
                        "service's default): e.g. 1 2 adds a two-worker qsim beside the default one")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for a service")
    parser.add_argument("--wrk", default=shutil.which("wrk"), help="the wrk binary (default: wrk on PATH)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args()
    if not args.wrk:
        parser.error("wrk is not installed: `make bench-wrk` installs it (apt-get install wrk)")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be >= 1 and --duration > 0")
    peer_threads = list(dict.fromkeys(args.peer_torch_threads or [os.cpu_count() or 1, 1]))
    if min(peer_threads) < 1:
        parser.error("--peer-torch-threads must be >= 1")

    def terminate(signum, _frame):  # SIGTERM/SIGHUP: leave through the finally below, like Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    load_start = loadavg()
    started = dt.datetime.now(dt.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="qsim-wrk-"))
    services: list[Service] = []
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        for service in services:
            service.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)  # also on a way out that skips the finally below
    questions = banking77.questions("test")
    cells: list[dict] = []
    try:
        revisions = args.qsim_rev or [None]
        qsims: list[Service] = []
        for n, rev in enumerate(revisions, 1):
            source, info = qsim_source(rev, tmp, n)
            for workers in args.qsim_workers:
                name = "qsim" if len(revisions) == 1 else f"qsim@{info['commit'][:7]}"
                name += f"-w{workers}" if args.qsim_workers != [1] else ""
                qsim = qsim_service(tmp, free_port(), source, re.sub(r"[^A-Za-z0-9@._-]", "_", name), workers)
                probe = probe_source(qsim)
                info["app_imported_from"] = probe["app"]
                qsim.ready_body.update(torch_threads=probe["torch_threads"], code=info, workers=workers)
                log(f"{qsim.name} from {info['source']} {info.get('commit') or info.get('head')}: "
                    f"app imported from {probe['app']}")
                qsims.append(qsim)
        peers = [peer_service(tmp, free_port(), n, args.peer_cache_dir) for n in peer_threads]
        services += [*qsims, *peers]
        bodies = tmp / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"question": q, "limit": args.limit}) + "\n" for q in questions))
        for service in services:
            service.start()
        log(f"starting {', '.join(f'{s.name} on :{s.port}' for s in services)} (logs in {tmp})")
        wait_ready(services, args.ready_timeout)
        for service in services:
            check_answers(service, questions, args.limit)
        for connections in args.concurrency:
            for service in services:
                log(f"warm-up {service.name} c={connections} ({args.warmup:g} s)")
                run_wrk(args.wrk, service, connections, args.warmup, bodies, args.timeout)
            for round_ in range(1, args.rounds + 1):
                for service in services:
                    cell = run_wrk(args.wrk, service, connections, args.duration, bodies, args.timeout)
                    cell["round"] = round_
                    cell["torch_threads"] = service.ready_body.get("torch_threads")
                    cells.append(cell)
                    log(f"round {round_} {service.name} c={connections}: p50 {cell['p50_ms']:.2f} ms, "
                        f"p99 {cell['p99_ms']:.2f} ms, {cell['rps']:.1f} req/s, {cell['errors']} errors")
    except Exception:
        for service in services:
            if service.process is not None:
                log(f"--- last lines of {service.name}'s log ---\n{service.log_tail()}")
        raise
    finally:
        cleanup()

    summary = [summarise([c for c in cells if c["service"] == service.name and c["connections"] == n])
               for n in args.concurrency for service in services]
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m bench.wrk_bench", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                    "wrk": wrk_version(args.wrk)},
        "load_start": load_start,
        "load_end": loadavg(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "limit": args.limit,
        "wrk_timeout_s": args.timeout,
        "peer_torch_threads": peer_threads,
        "qsim": [{**q.ready_body, "name": q.name, "ready_seconds": q.ready_seconds} for q in qsims],
        "peers": [{**p.ready_body, "name": p.name, "ready_seconds": p.ready_seconds} for p in peers],
        "cells": cells,
        "summary": summary,
        "targets": targets(summary),
    }
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:  # the services are already stopped (finally in main)
        log(f"interrupted ({str(interrupt) or 'Ctrl-C'}); every service was stopped")
        sys.exit(130)
