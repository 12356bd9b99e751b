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


def test_upgrading_a_sqlite_database_keeps_its_rows_and_stops_id_reuse(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for question_id in (1, 2, 3):
            connection.execute(
                sa.text("INSERT INTO questions (id, text, external_id, created_at, updated_at) "
                        "VALUES (:id, :text, :external, '2026-11-01', '2026-11-01')"),
                {"id": question_id, "text": f"question {question_id}", "external": f"e{question_id}"},
            )
            connection.execute(sa.text("INSERT INTO question_changes (question_id, op, created_at) "
                                       "VALUES (:id, 'upsert', '2026-11-01')"), {"id": question_id})
        connection.execute(sa.text("DELETE FROM questions WHERE id = 3"))  # the highest id, gone before the upgrade
        connection.execute(sa.text("INSERT INTO question_changes (question_id, op, created_at) VALUES (3, 'delete', '2026-11-01')"))
    upgrade_to_head(url)
    check_schema(engine)
    with engine.begin() as connection:
        assert connection.execute(sa.text("SELECT id, external_id FROM questions ORDER BY id")).all() == [(1, "e1"), (2, "e2")]
        connection.execute(sa.text("DELETE FROM questions WHERE id = 2"))
        connection.execute(sa.text("INSERT INTO questions (text, created_at, updated_at) VALUES ('new', '2026-12-01', '2026-12-01')"))
        # neither 2 (deleted now) nor 3 (deleted before the upgrade, known from the change log) again
        assert connection.execute(sa.text("SELECT max(id) FROM questions")).scalar_one() == 4
        with pytest.raises(sa.exc.IntegrityError):  # the unique external id survived the copy
            connection.execute(sa.text("INSERT INTO questions (text, external_id, created_at, updated_at) "
                                       "VALUES ('dup', 'e1', '2026-12-01', '2026-12-01')"))
    indexes = {index["name"] for index in sa.inspect(engine).get_indexes("feedback")}
    assert "ix_feedback_question_id" in indexes
    engine.dispose()
