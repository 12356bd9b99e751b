"""All runtime settings of qsim in one place, read from `QSIM_*` environment variables (and `.env`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QSIM_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = Field(
        "development",
        description="production refuses to start without an admin token and never fills an empty database",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL")

    # Storage
    database_url: str = Field(
        f"sqlite:///{PROJECT_ROOT / 'var' / 'qsim.db'}",
        description="SQLAlchemy URL; SQLite file by default, postgresql+psycopg://... in docker-compose",
    )
    database_wait_seconds: float = Field(60.0, ge=0, description="how long prestart waits for the database")
    database_timeout_seconds: float = Field(2.0, gt=0, description="connect/statement timeout, so an outage fails fast")

    # Model and index
    model_dir: Path = Field(PROJECT_ROOT / "models" / "default", description="the model served at first start")
    models_root: Path = Field(
        PROJECT_ROOT / "models", description="directory of the models a reindex may switch to, by name"
    )
    index_dir: Path = Field(PROJECT_ROOT / "var" / "index", description="where the index is saved between runs")
    index_save_interval_seconds: float = Field(
        60.0, ge=0, description="save the index in the background this often when it changed (0: only at shutdown)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the FAISS index (and encoder) run; auto = GPU when FAISS sees one"
    )
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="where the codes live: faiss (in each worker's memory, saved under index_dir) or milvus "
        "(a Milvus collection behind an alias: embedded milvus-lite for a .db path, or a server; extra qsim[milvus])",
    )
    milvus_uri: str | None = Field(
        None, description="with index_backend=milvus: a .db file path (embedded milvus-lite) or http://host:19530"
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus credentials (user:password or an API key)")
    milvus_timeout_seconds: float = Field(10.0, gt=0, description="how long start-up waits for Milvus to answer")
    index_kind: Literal["exact", "ivf", "hnsw", "sq8"] = Field(
        "exact", description="exact (default) answers the rule exactly; the others are approximate on purpose"
    )
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch intra-op (and BLAS) threads while serving; the service gets its parallelism from batching, and "
        "OpenMP threads that spin-wait on a busy machine make encoding an order of magnitude slower",
    )
    # Approximate index kinds only (SimilarityIndex keywords nlist, nprobe, hnsw_m, ef_search)
    index_nlist: int | None = Field(
        None, ge=1, description="ivf/sq8: inverted lists per large segment (default: about sqrt of its samples)"
    )
    index_nprobe: int = Field(16, ge=1, description="ivf/sq8: lists read per query sample; more = better recall, slower")
    index_hnsw_m: int = Field(32, ge=2, description="hnsw: graph links per node; more = better recall, more memory")
    index_ef_search: int = Field(128, ge=1, description="hnsw: candidates kept while searching; more = better recall")

    # Embedded default corpus
    seed_corpus: Path | None = PROJECT_ROOT / "data" / "banking77" / "train.csv"
    seed_text_column: str = "text"
    seed_metadata_columns: list[str] = Field(default_factory=lambda: ["category"])
    seed_on_empty: bool = Field(True, description="fill an empty database with seed_corpus (never in production)")

    # HTTP service
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    admin_token: SecretStr | None = None
    cors_origins: list[str] = Field(default_factory=list, description="CORS is closed unless origins are listed")
    max_body_bytes: int = Field(1_048_576, ge=1)
    body_timeout_seconds: float = Field(
        30.0, ge=0, description="a request body not fully received this long after it started gets 408 (0: no limit)"
    )
    max_question_chars: int = Field(1000, ge=1)
    max_batch_questions: int = Field(256, ge=1, description="questions per POST /questions/similar/batch")
    max_bulk_questions: int = Field(1000, ge=1, description="questions per POST /questions/bulk")
    max_limit: int = Field(100, ge=1, description="results one search may ask for")
    max_filter_keys: int = Field(16, ge=1, description="metadata keys one search filter may name")
    min_coverage: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="a question whose visible characters the model's tokenizer knows less than this share of "
        "(another script, emoji) is answered only with stored questions of the same text, and says so "
        "(reason low_coverage)",
    )
    search_timeout_seconds: float = Field(10.0, gt=0, description="a queued search not answered by then gets 503")
    load_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="a search that reaches a worker still loading its index waits this long for it before a 503; "
        "with several workers, the readiness probe answers from whichever worker it reaches",
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="how long shutdown waits for a running reindex")
    access_log: bool = Field(True, description="uvicorn access log lines")
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        description="how long an idle HTTP connection stays open; longer than the clients' and proxies' own idle "
        "expiry (httpx 5 s, load balancers 60 s), so that the server never closes a connection just as a client "
        "reuses it",
    )

    # Search micro-batching and back-pressure
    batch_max_size: int = Field(64, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0)
    queue_max: int = Field(1024, ge=1, description="questions waiting for the search executor; past it, 503")
    retry_after_seconds: int = Field(1, ge=0)
    # The change applier (app/similarity/applier.py), the one writer of the index
    applier_poll_ms: float = Field(
        50.0, gt=0,
        description="how often the applier reads the change log for other processes' writes (workers, qsim import) "
        "and the active model; a write in this process wakes it at once",
    )
    write_visibility_timeout_seconds: float = Field(
        10.0, ge=0,
        description="a write waits this long for every live worker's index to apply it before it returns anyway "
        "(counted in qsim_lagging_writes)",
    )
    replica_heartbeat_seconds: float = Field(
        0.5, gt=0, description="how often each worker records its applied revision and model generation"
    )
    replica_timeout_seconds: float = Field(
        2.0, gt=0, description="a worker that has not recorded its progress for this long is no longer waited for"
    )
    model_switch_timeout_seconds: float = Field(
        120.0, ge=0, description="a reindex that switches the model waits this long for the other workers to follow"
    )
    metrics_dir: Path = Field(
        PROJECT_ROOT / "var" / "metrics", description="shared metrics files when several workers serve"
    )

    # Desk page (app/web)
    map_max_points: int = Field(
        3000, ge=10, le=100_000,
        description="GET /questions/map projects at most this many questions (a fixed sample of larger collections)",
    )

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, level: str) -> str:
        level = level.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"unknown log level {level!r}: choose DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("admin_token")
    @classmethod
    def _strip_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        # A token pasted with a trailing newline or space could never be sent back (clients and
        # the check strip it), and one of spaces only would pass the production check.
        if token is None:
            return None
        stripped = token.get_secret_value().strip()
        return SecretStr(stripped) if stripped else None

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres_driver(cls, url: str) -> str:
        # docker/ops people write postgresql://; we ship psycopg 3, not psycopg2.
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url[len("postgresql://") :]
        if url.startswith("postgres://"):
            return "postgresql+psycopg://" + url[len("postgres://") :]
        return url

    @model_validator(mode="after")
    def _milvus_needs_a_uri(self) -> Settings:
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError("QSIM_INDEX_BACKEND=milvus needs QSIM_MILVUS_URI (a .db path for milvus-lite, or http://host:19530)")
        if self.index_backend == "milvus" and self.index_kind != "exact":
            raise ValueError("QSIM_INDEX_BACKEND=milvus serves the exact rule only (QSIM_INDEX_KIND=exact)")
        return self

    @model_validator(mode="after")
    def _production_needs_token(self) -> Settings:
        if self.env == "production" and not (self.admin_token and self.admin_token.get_secret_value()):
            raise ValueError("QSIM_ADMIN_TOKEN must be set when QSIM_ENV=production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
