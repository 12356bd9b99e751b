"""Quality measured through the running service: the numbers a desk would see over HTTP.

    python -m bench.service_quality [--model models/default] [--set banking77|snips] [--out-of-scope 0.2 --seeds 0 1 2 3 4 5 6 7]

Starts the service as `make run` does (docker/entrypoint.sh) on a private SQLite database filled
with the set's stored questions (their intent in each question's metadata), then asks
POST /questions/similar/batch for every query twice:

- ranking: threshold opened (2.0, min_pairs 1, limit 10), so the order is the service's closest-pair
  order over every stored question -> P@1 and MAP@10 (relevant = same intent);
- as served: the model's calibrated rule (threshold and min_pairs null) -> the share of queries that
  get an answer and the precision of those top answers.

With --out-of-scope F the stored questions of a seeded F of the intents are deleted through the API
first, so their queries have no right answer: the share of them that get no match is reported, and
in-scope precision beside it. Which intents are held out moves that share by several points (one
draw of 15 BANKING77 intents is not a measurement), so --seeds measures one draw per seed in the
same service run, restoring each draw's questions through POST /questions/bulk after it, and
prints the mean and the lowest draw. Sets: BANKING77 (3,080 test queries, 10,003 stored) and SNIPS
(out of domain: 1,000 queries, 3,000 stored).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import urllib.request
from collections import Counter
from pathlib import Path

from app.evaluation.metrics import average_precision_at_k
from bench.http_bench import OUT, ROOT, free_port, start_service, stop_service, wait_ready

SETS = {
    "banking77": (ROOT / "data/banking77/train.csv", ROOT / "data/banking77/test.csv", "category"),
    "snips": (ROOT / "data/snips/stored.csv", ROOT / "data/snips/queries.csv", "intent"),
}


def post(base: str, path: str, body: dict, method: str = "POST") -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method=method,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read() or b"{}")


def rows(path: Path, label: str) -> list[tuple[str, str]]:
    with path.open(newline="") as handle:
        return [(r["text"], r[label]) for r in csv.DictReader(handle)]


def stored_items(base: str) -> list[dict]:
    items, after = [], 0
    while True:
        page = json.loads(urllib.request.urlopen(f"{base}/questions?limit=500&after_id={after}").read())
        batch = page["items"] if isinstance(page, dict) else page
        if not batch:
            return items
        items.extend(batch)
        after = batch[-1]["id"]


def hold_out(base: str, label: str, removed: set[str]) -> list[dict]:
    """Deletes the stored questions of the `removed` intents through the API -> what was deleted."""
    deleted = [item for item in stored_items(base) if (item.get("metadata") or {}).get(label) in removed]
    for item in deleted:
        urllib.request.urlopen(urllib.request.Request(f"{base}/questions/{item['id']}", method="DELETE"))
    return deleted


def restore(base: str, deleted: list[dict]) -> None:
    for start in range(0, len(deleted), 500):
        post(base, "/questions/bulk", {"questions": [
            {key: item.get(key) for key in ("text", "external_id", "answer", "metadata")}
            for item in deleted[start : start + 500]]})


def measure(base: str, label: str, stored: list[tuple[str, str]], queries: list[tuple[str, str]], removed: set[str]) -> dict:
    relevant = Counter(intent for _, intent in stored if intent not in removed)
    p1 = ap = measured = answered = right = oos = oos_silent = 0
    for start in range(0, len(queries), 256):
        chunk = queries[start : start + 256]
        texts = [q for q, _ in chunk]
        ranked = post(base, "/questions/similar/batch", {"questions": texts, "limit": 10, "threshold": 2.0, "min_pairs": 1})
        served = post(base, "/questions/similar/batch", {"questions": texts, "limit": 1})
        for (_, intent), ranking, answer in zip(chunk, ranked["results"], served["results"], strict=True):
            labels = [(m.get("metadata") or {}).get(label) for m in ranking["results"]]
            top = [(m.get("metadata") or {}).get(label) for m in answer["results"]][:1]
            if intent in removed:
                oos += 1
                oos_silent += not top
                continue
            measured += 1
            hits = [x == intent for x in labels]
            p1 += bool(hits) and hits[0]
            ap += average_precision_at_k(hits, relevant[intent])
            answered += bool(top)
            right += bool(top) and top[0] == intent
    return {"in_scope": measured, "p_at_1": p1 / measured, "map_at_10": ap / measured,
            "answered": answered / measured, "precision": right / max(answered, 1),
            "out_of_scope": oos, "no_match": oos_silent / oos if oos else None,
            "rule": (served["threshold"], served["min_pairs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--set", choices=sorted(SETS), default="banking77")
    parser.add_argument("--out-of-scope", type=float, default=0.0, help="share of intents removed from the stored side")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="with --out-of-scope: one draw of removed intents per seed, each restored after it")
    args = parser.parse_args()
    if args.seeds != [0] and args.out_of_scope <= 0:
        parser.error("--seeds draws out-of-scope intents: give --out-of-scope too")
    stored_path, query_path, label = SETS[args.set]
    work = OUT / "service_quality" / args.set
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"QSIM_DATABASE_URL": f"sqlite:///{work / 'qsim.db'}", "QSIM_INDEX_DIR": str(work / "index"),
           "QSIM_MODEL_DIR": str(args.model.resolve()), "QSIM_SEED_CORPUS": str(stored_path),
           "QSIM_SEED_METADATA_COLUMNS": json.dumps([label]), "QSIM_ENV": "development"}
    stored = rows(stored_path, label)
    queries = rows(query_path, label)
    intents = sorted({intent for _, intent in stored})
    if args.out_of_scope > 0 and round(len(intents) * args.out_of_scope) < 1:
        parser.error(f"--out-of-scope {args.out_of_scope} holds out no intent of {len(intents)}")
    process = start_service(env, port)
    results = []
    try:
        wait_ready(base, process)
        for seed in args.seeds if args.out_of_scope > 0 else [None]:
            removed = set() if seed is None else set(
                random.Random(seed).sample(intents, round(len(intents) * args.out_of_scope)))
            deleted = hold_out(base, label, removed) if removed else []
            results.append((seed, removed, measure(base, label, stored, queries, removed)))
            if deleted:
                restore(base, deleted)
    finally:
        stop_service(process)
    for seed, removed, m in results:
        print(f"{args.set} through the service ({args.model}): {m['in_scope']} in-scope queries, {len(stored)} stored"
              + (f", seed {seed}: {len(removed)} intents out of scope ({m['out_of_scope']} queries)" if removed else ""))
        print(f"ranking: P@1 {m['p_at_1']:.3f}  MAP@10 {m['map_at_10']:.3f}")
        print(f"as served (t {m['rule'][0]:.4g}, min_pairs {m['rule'][1]}): answered {m['answered']:.3f}, "
              f"precision of answered tops {m['precision']:.3f}"
              + (f", out-of-scope queries with no match {m['no_match']:.3f}" if m["no_match"] is not None else ""))
    if len(results) > 1:
        mean = {key: sum(m[key] for _, _, m in results) / len(results)
                for key in ("p_at_1", "map_at_10", "answered", "precision", "no_match")}
        lowest = min(m["no_match"] for _, _, m in results)
        print(f"mean over {len(results)} draws of out-of-scope intents: P@1 {mean['p_at_1']:.3f} MAP@10 "
              f"{mean['map_at_10']:.3f}, answered {mean['answered']:.3f}, precision {mean['precision']:.3f}, "
              f"out-of-scope no match {mean['no_match']:.3f} (lowest draw {lowest:.3f})")


if __name__ == "__main__":
    main()
