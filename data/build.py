"""Builds the bundled training and evaluation files from the general question corpus in ../shared.

    python data/build.py [--shared ../shared/data/questions]

- data/questions/transfer.txt: the unlabeled transfer set the default model is distilled on: up to
  --per-source lines from each source of questions.txt except SNIPS (held out, below) and from the
  MultiDoGO customer turns (extras), shuffled with a fixed seed.
- data/snips/stored.csv, data/snips/queries.csv: the out-of-domain test. SNIPS voice-assistant
  requests (7 intents) never enter training; questions.txt keeps each intent's utterances together,
  so the intent is the block a line stands in (block starts found once, by reading the transitions).

Licences: data/questions/SOURCES.md and data/questions/licenses/.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SNIPS_SOURCE = "snips_2017"
# First line (1-based, within questions.txt) of each SNIPS intent block, in file order.
SNIPS_BLOCKS = [
    (1, "AddToPlaylist"),
    (2035, "BookRestaurant"),
    (4103, "GetWeather"),
    (6188, "PlayMusic"),
    (8246, "RateBook"),
    (10237, "SearchCreativeWork"),
    (12288, "SearchScreeningEvent"),
]
EXTRAS = {"multidogo_customer_turns": "extras/multidogo_customer_turns.txt"}


def read_ranges(shared: Path) -> dict[str, tuple[int, int]]:
    ranges = {}
    with (shared / "questions.ranges.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            ranges[row["source"]] = (int(row["first_line"]), int(row["last_line"]))
    return ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data" / "questions")
    parser.add_argument("--per-source", type=int, default=4000)
    parser.add_argument("--snips-stored", type=int, default=3000)
    parser.add_argument("--snips-queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    lines = (args.shared / "questions.txt").read_text(encoding="utf-8").split("\n")
    ranges = read_ranges(args.shared)
    rng = random.Random(args.seed)

    transfer: list[str] = []
    for source, (first, last) in ranges.items():
        if source == SNIPS_SOURCE:
            continue
        block = lines[first - 1 : last]
        transfer.extend(rng.sample(block, min(args.per_source, len(block))))
    for path in EXTRAS.values():
        block = [line for line in (args.shared / path).read_text(encoding="utf-8").split("\n") if line]
        transfer.extend(rng.sample(block, min(args.per_source, len(block))))
    rng.shuffle(transfer)
    out = HERE / "questions"
    (out / "transfer.txt").write_text("\n".join(transfer) + "\n", encoding="utf-8")
    shutil.copy(args.shared / "SOURCES.md", out / "SOURCES.md")
    shutil.copytree(args.shared / "licenses", out / "licenses", dirs_exist_ok=True)
    if (args.shared / "extras" / "README.md").exists():
        shutil.copy(args.shared / "extras" / "README.md", out / "EXTRAS.md")

    first, last = ranges[SNIPS_SOURCE]
    labelled = []
    for number in range(first, last + 1):
        intent = [name for start, name in SNIPS_BLOCKS if start <= number][-1]
        labelled.append((lines[number - 1], intent))
    rng.shuffle(labelled)
    snips = HERE / "snips"
    snips.mkdir(exist_ok=True)
    parts = {
        "stored.csv": labelled[: args.snips_stored],
        "queries.csv": labelled[args.snips_stored : args.snips_stored + args.snips_queries],
    }
    for name, rows in parts.items():
        with (snips / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "intent"])
            writer.writerows(rows)
    print(f"transfer.txt: {len(transfer)} lines; snips: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
