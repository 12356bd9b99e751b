"""How long a write takes to return, one worker against two, side by side in one run.

    python -m bench.write_bench [--writes 60] [--qsim-rev REV ...] [--qsim-workers 1 2] [--json out.json]

A write (`POST /questions`) returns once every live worker's index has applied it, so with two
workers it waits for the other one. Each service starts as `bench.wrk_bench` starts qsim
(docker/entrypoint.sh on its embedded defaults, storage in a temporary directory, the bundled 10k
questions seeded); then the writes go round the services in turn, each on a new connection (the
kernel hands it to either worker), and each is searched for at once on another new connection: a
write counts as seen when its question is its own top result (the default rule).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.wrk_bench import free_port, log, qsim_service, qsim_source, wait_ready


def request(service, method: str, path: str, body: dict) -> tuple[int, dict, float]:
    """One request on a fresh connection -> (status, body, seconds)."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    started = time.perf_counter()
    connection.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    raw = response.read()
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        payload = {"body": raw[:200].decode(errors="replace")}
    took = time.perf_counter() - started
    connection.close()
    return response.status, payload, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=60, help="writes per service")
    parser.add_argument("--qsim-rev", nargs="+", default=[None], help="git revisions to run side by side "
                        "(default: the checkout as it is)")
    parser.add_argument("--qsim-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qsim-write-bench-") as tmp_name:
        tmp = Path(tmp_name)
        services, sources = [], {}
        for n, rev in enumerate(args.qsim_rev):
            source, info = qsim_source(rev, tmp, n)
            sources[rev or "checkout"] = info
            for workers in args.qsim_workers:
                name = f"qsim@{rev or 'checkout'}-w{workers}".replace("/", "_")
                services.append(qsim_service(tmp, free_port(), source, name, workers))
        try:
            for service in services:
                service.start()
            wait_ready(services, args.ready_timeout)
            # Both workers of a service serving before anything is timed: a search on a worker still
            # loading waits for its load, and fresh connections reach both.
            for service in services:
                for _ in range(20):
                    request(service, "POST", "/questions/similar", {"question": "a warm-up question", "limit": 1})
            timings: dict[str, list[float]] = {service.name: [] for service in services}
            unseen = dict.fromkeys(timings, 0)
            for i in range(args.writes):
                for service in services:
                    text = f"write bench question {i} for {service.name}: my card payment was declined twice"
                    status, created, took = request(service, "POST", "/questions", {"text": text})
                    if status != 201:
                        raise RuntimeError(f"{service.name}: create returned {status}: {created}")
                    timings[service.name].append(took)
                    status, found, _ = request(service, "POST", "/questions/similar", {"question": text, "limit": 1})
                    if status != 200 or [r["id"] for r in found.get("results", [])] != [created["id"]]:
                        unseen[service.name] += 1
        finally:
            for service in services:
                service.stop()

    rows = []
    for name, seconds in timings.items():
        ms = sorted(s * 1000 for s in seconds)
        rows.append({
            "service": name, "writes": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2), "not_seen_next": unseen[name],
        })
    print("\n| service | writes | p50 ms | p90 ms | max ms | not seen by the next search |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['service']} | {row['writes']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
              f"{row['max_ms']:.2f} | {row['not_seen_next']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sources": sources, "rows": rows}, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
