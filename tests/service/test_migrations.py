"""Alembic owns the schema: the models match the migrations, both ways, on both databases."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient

import app.admin.models  # noqa: F401
import app.clusters.models  # noqa: F401
import app.feedback.models  # noqa: F401
import app.questions.models  # noqa: F401
from app.core.db import Base, open_database
from app.core.migrations import alembic_config, check_schema, current_revision, head_revision, upgrade_to_head
from app.main import create_app
from tests.service_fixtures import make_settings


def test_models_match_the_migrations(database_url):
    database = open_database(database_url)
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    database.dispose()
    assert differences == []


def test_downgrade_to_nothing_and_up_again(database_url):
    database = open_database(database_url)
    command.downgrade(alembic_config(database_url), "base")
    assert current_revision(database.engine) is None
    upgrade_to_head(database_url)
    assert current_revision(database.engine) == head_revision()
    check_schema(database.engine)
    database.dispose()


def test_the_service_refuses_an_unmigrated_database(tmp_path, tiny_model_dir):
    settings = make_settings(f"sqlite:///{tmp_path / 'blank.db'}", tiny_model_dir, tmp_path)
    with pytest.raises(Exception, match="run `alembic upgrade head`"), TestClient(create_app(settings)):
        pass
