"""`qsim serve` (prestart, then uvicorn) and `qsim reindex` (rebuild the saved index offline)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.cli import CommandError, command


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the HTTP service: wait for the database, apply migrations, fill an empty development database "
        "with the bundled questions, then serve with uvicorn. Everything else comes from QSIM_* variables."
    )
    p.add_argument("--host", help="interface to listen on (QSIM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (QSIM_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (QSIM_WORKERS, default 1); each holds its own index")
    p.add_argument("--no-prestart", action="store_true", help="skip waiting for the database, migrations and seeding")


@command("serve", "run the HTTP service", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.core.config import get_settings
    from app.core.logging import configure_logging
    from app.prestart import DatabaseUnavailable, prestart

    settings = get_settings()
    configure_logging(settings.log_level)
    _warn_unknown_variables(os.environ)
    _check_device(settings)
    if not args.no_prestart:
        try:
            prestart(settings)
        except DatabaseUnavailable as error:
            raise CommandError(str(error)) from None
    _check_model(settings)
    workers = args.workers or settings.workers
    if workers > 1:
        _share_metrics_between_workers(settings.metrics_dir)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=workers,
        access_log=settings.access_log,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        timeout_keep_alive=settings.keep_alive_seconds,
        proxy_headers=True,
    )
    return 0


# QSIM_ variables that are not settings: the test suite's own switches, and docker-compose.yml's
# (read by compose on the host, never by the service).
TOOL_VARIABLES = {
    "QSIM_LONG_TESTS", "QSIM_CHROMIUM", "QSIM_TEST_POSTGRES_URL",
    "QSIM_VERSION", "QSIM_MODEL", "QSIM_PUBLISH_PORT", "QSIM_GPU_PUBLISH_PORT", "QSIM_MILVUS_PUBLISH_PORT",
}


def _warn_unknown_variables(environ) -> list[str]:
    """A mistyped QSIM_ variable (QSIM_WORKER=2) would be ignored without a word: name it, and the
    setting it was probably meant to be. Returns the warnings."""
    import difflib
    import logging

    from app.core.config import Settings

    known = {f"QSIM_{name.upper()}" for name in Settings.model_fields}
    warnings = []
    for name in sorted(key for key in environ if key.startswith("QSIM_") and key not in known | TOOL_VARIABLES):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
        warnings.append(f"{name} is not a qsim setting and is ignored" + (f" (did you mean {close[0]}?)" if close else ""))
    for warning in warnings:
        logging.getLogger("app.server").warning(warning)
    return warnings


def _check_model(settings) -> None:
    """The model the workers will serve (QSIM_MODEL_DIR, or the one the last reindex switched to) is
    a model: checked here and named in one line, where uvicorn's start-up would print a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.admin.repository import ServiceStateRepository
    from app.core.db import missing_sqlite_file, open_database
    from app.model.artifact import ArtifactError, read_config

    path = Path(settings.model_dir)
    if missing_sqlite_file(settings.database_url) is None:  # never create one
        database = open_database(settings.database_url, settings.database_timeout_seconds)
        try:
            path = ServiceStateRepository(database).active_model(settings.model_dir).path
        except SQLAlchemyError:  # not migrated yet (--no-prestart) or away: QSIM_MODEL_DIR is what will load
            pass
        finally:
            database.dispose()
    try:
        read_config(path)
    except ArtifactError as error:
        named = f"QSIM_MODEL_DIR={settings.model_dir}" if path == Path(settings.model_dir) else (
            f"the model the last reindex switched to ({path})"
        )
        raise CommandError(f"{named}: {error}") from None


def _check_device(settings) -> None:
    """QSIM_DEVICE=cuda where no GPU can serve, named in one line before anything starts."""
    if settings.device == "cuda":
        import torch

        from app.search.accelerator import resolve_device

        if not torch.cuda.is_available():
            raise CommandError(
                "QSIM_DEVICE=cuda but torch sees no GPU (a CUDA build of torch and a visible GPU are needed); "
                "use QSIM_DEVICE=auto or cpu to run on the CPU"
            )
        try:
            resolve_device("cuda")
        except ValueError as error:
            raise CommandError(f"QSIM_DEVICE=cuda: {error}") from None


def _share_metrics_between_workers(directory: Path) -> None:
    """Workers write their metrics to files in an emptied `directory`; any of them reports all."""
    import shutil

    from app.core.metrics import MULTIPROCESS_ENV

    path = Path(os.environ.get(MULTIPROCESS_ENV) or directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(path)


def _reindex_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Rebuild the saved index from the database while the service is stopped (a running service "
        "reindexes without downtime through POST /admin/reindex instead)."
    )
    p.add_argument("--model", type=Path, help="model directory (default: the model the service would load)")


@command("reindex", "rebuild the saved index offline", _reindex_args)
def _reindex(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.core.config import get_settings
    from app.core.db import migrated_database
    from app.similarity.applier import ChangeApplier

    settings = get_settings()
    with migrated_database(settings.database_url, settings.database_timeout_seconds) as database:
        applier, active = ChangeApplier.for_tools(database, settings)
        encoder = applier.builder.load_encoder(args.model or active.path)
        with tqdm(total=100, unit="%", disable=not os.isatty(1)) as bar:
            state = applier.builder.build(encoder, active.generation, progress=lambda f: bar.update(round(f * 100) - bar.n))
        applier.save_state(state)
        path = applier.builder.index_path(encoder.model_id)
        print(f"indexed {len(state.index)} questions with model {encoder.name} ({encoder.model_id}) -> {path}")
    return 0
