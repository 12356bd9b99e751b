"""HTTP benchmark: POST /questions/similar against the service started as the README starts it.

    python -m bench.http_bench [--duration 20] [--concurrency 1 16 32] [--url URL]

Without --url it starts the service itself through docker/entrypoint.sh (the `make run` path) on
a private SQLite database under bench/out/, filled with the bundled 10k BANKING77 questions, and
times how long it takes to become ready (first start: build the index; second start: load the
saved one). The load comes from this separate process: a minimal asyncio HTTP/1.1 keep-alive
client (pre-encoded requests, tens of microseconds per request) so the generator steals as little
of the machine as possible from the server. Queries are the BANKING77 test questions, in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import banking77

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen | None, timeout: float = 600) -> float:
    started = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError("service not ready")
        time.sleep(0.05)


def start_service(env_overrides: dict[str, str], port: int) -> subprocess.Popen:
    env = {**os.environ, **env_overrides, "QSIM_PORT": str(port), "QSIM_HOST": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([str(ROOT / "docker" / "entrypoint.sh")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_service(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def request_bytes(host: str, port: int, question: str, limit: int) -> bytes:
    body = json.dumps({"question": question, "limit": limit}).encode()
    head = (
        f"POST /questions/similar HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int, duration: float):
    latencies: list[float] = []
    errors: dict[int, int] = {}
    deadline = time.perf_counter() + duration
    counter = 0

    async def worker(offset: int) -> None:
        nonlocal counter
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        while time.perf_counter() < deadline:
            payload = requests[i % len(requests)]
            i += concurrency
            started = time.perf_counter()
            writer.write(payload)
            status = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            counter += 1
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark a service that is already running here")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--limit", type=int, default=10, help="results per search")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    questions = banking77.questions("test")
    process = None
    startup: dict[str, float] = {}
    if args.url:
        host, port = args.url.split("//")[1].split(":")
        port = int(port.rstrip("/"))
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        database = OUT / "http_bench.db"
        for leftover in OUT.glob("http_bench.db*"):
            leftover.unlink()
        env = {"QSIM_DATABASE_URL": f"sqlite:///{database}", "QSIM_INDEX_DIR": str(OUT / "http_bench_index"),
               "QSIM_LOG_LEVEL": "WARNING", "QSIM_ACCESS_LOG": "false"}
        host, port = "127.0.0.1", free_port()
        base = f"http://{host}:{port}"
        subprocess.run(["rm", "-rf", env["QSIM_INDEX_DIR"]], check=True)
        process = start_service(env, port)
        startup["first start (migrate, seed 10k, build index)"] = wait_ready(base, process)
        stop_service(process)
        process = start_service(env, port)
        startup["restart (saved index)"] = wait_ready(base, process)
    base = f"http://{host}:{port}"
    with urllib.request.urlopen(f"{base}/readyz") as response:
        ready = json.loads(response.read())
    payloads = [request_bytes(host, port, q, args.limit) for q in questions]
    rows = []
    try:
        for concurrency in args.concurrency:
            asyncio.run(run_load(host, port, payloads, concurrency, args.warmup))
            latencies, errors, elapsed = asyncio.run(run_load(host, port, payloads, concurrency, args.duration))
            rows.append({
                "concurrency": concurrency,
                "requests": len(latencies),
                "errors": sum(errors.values()),
                "rps": len(latencies) / elapsed,
                "p50_ms": percentile(latencies, 50) * 1000,
                "p90_ms": percentile(latencies, 90) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
                "mean_ms": statistics.fmean(latencies) * 1000,
            })
    finally:
        if process is not None:
            stop_service(process)

    print(f"\nqsim HTTP benchmark: POST /questions/similar, limit {args.limit}, {ready['questions']} questions, "
          f"model {ready['model']} ({ready['model_id']}), index {ready['index_kind']} on {ready['device']}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    for label, seconds in startup.items():
        print(f"startup, {label}: {seconds:.2f} s")
    print("\n| concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['concurrency']} | {row['requests']} | {row['errors']} | {row['rps']:.0f} | "
              f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"startup_seconds": startup, "levels": rows, "ready": ready}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
