"""`qsim import`: bulk loading, idempotent re-imports, clear errors."""

from __future__ import annotations

import csv

import pytest

from app.cli import main
from app.core.config import get_settings
from app.core.db import open_database
from app.questions import repository


@pytest.fixture
def env(monkeypatch, database_url):
    monkeypatch.setenv("QSIM_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def stored(url):
    database = open_database(url)
    with database.reading() as session:
        rows = {q.external_id: (q.text, q.answer, q.meta) for q in repository.page(session, 0, 1000)}
        changes = repository.last_change(session)
    database.dispose()
    return rows, changes


def test_import_loads_and_a_reimport_only_applies_what_changed(env, tmp_path, capsys):
    rows = [{"id": f"d{i}", "q": f"question number {i}", "a": f"answer {i}", "cat": "c"} for i in range(5)]
    path = write_csv(tmp_path / "desk.csv", rows)
    args = ["import", "--file", str(path), "--text-column", "q", "--external-id-column", "id",
            "--answer-column", "a", "--metadata-column", "cat", "--no-progress"]
    assert main(args) == 0
    assert "5 rows: 5 created, 0 updated, 0 unchanged" in capsys.readouterr().out
    first, changes = stored(env)
    assert first["d3"] == ("question number 3", "answer 3", {"cat": "c"})

    assert main(args) == 0
    assert "0 created, 0 updated, 5 unchanged" in capsys.readouterr().out
    assert stored(env) == (first, changes)  # nothing rewritten, nothing logged

    rows[2]["q"] = "a reworded question"
    write_csv(path, rows)
    assert main(args) == 0
    assert "0 created, 1 updated, 4 unchanged" in capsys.readouterr().out
    assert stored(env)[0]["d2"][0] == "a reworded question"


def test_a_reimport_that_turns_metadata_1_into_true_updates_it(env, tmp_path, capsys):
    import json

    path = tmp_path / "desk.jsonl"
    args = ["import", "--file", str(path), "--text-column", "q", "--external-id-column", "id",
            "--metadata-column", "vip", "--no-progress"]
    path.write_text(json.dumps({"id": "d1", "q": "card never arrived", "vip": 1}) + "\n")
    assert main(args) == 0
    assert stored(env)[0]["d1"][2] == {"vip": 1}  # JSON values are kept as JSON, not as Python's str()
    path.write_text(json.dumps({"id": "d1", "q": "card never arrived", "vip": True}) + "\n")
    assert main(args) == 0
    assert "0 created, 1 updated, 0 unchanged" in capsys.readouterr().out.splitlines()[-1]
    assert stored(env)[0]["d1"][2] == {"vip": True}
    path.write_text(json.dumps({"id": 42, "q": "card never arrived", "vip": {"nested": 1}}) + "\n")
    assert main(args) == 2
    assert "metadata column 'vip' holds" in capsys.readouterr().err
    for value in ("1e400", "NaN", "-Infinity"):  # JSON numbers Python reads as inf or nan
        path.write_text('{"id": "d1", "q": "card never arrived", "vip": ' + value + "}\n")
        assert main(args) == 2
        assert "must not contain NaN or infinite numbers" in capsys.readouterr().err
    assert stored(env)[0]["d1"][2] == {"vip": True}


def test_reimporting_through_the_library_compares_metadata_as_json(env):
    from app.questions.importer import import_questions
    from app.questions.repository import NewQuestion

    database = open_database(env)
    try:
        import_questions(database, [NewQuestion("card lost", external_id="x1", meta={"vip": 1})])
        report = import_questions(database, [NewQuestion("card lost", external_id="x1", meta={"vip": True})])
        assert (report.updated, report.unchanged) == (1, 0)
    finally:
        database.dispose()
    assert stored(env)[0]["x1"][2] == {"vip": True}


def test_import_errors_name_the_problem_and_write_nothing(env, tmp_path, capsys):
    path = write_csv(tmp_path / "bad.csv", [{"id": "x", "q": "fine"}, {"id": "x", "q": "twice"}])
    assert main(["import", "--file", str(path), "--text-column", "q", "--external-id-column", "id"]) == 2
    assert "external id 'x' appears in data rows 1 and 2" in capsys.readouterr().err
    assert main(["import", "--file", str(path), "--text-column", "question"]) == 2
    assert "has no column 'question'" in capsys.readouterr().err
    assert stored(env)[0] == {}


@pytest.mark.parametrize(
    ("row", "problem"),
    [({"id": "x" * 256, "q": "fine", "a": "ok"}, "data row 2: external_id String should have at most 255 characters"),
     ({"id": "n", "q": "a NUL \x00 here", "a": "ok"}, "data row 2: text must not contain NUL characters"),
     ({"id": "l", "q": "fine", "a": "y" * 20_001}, "data row 2: answer String should have at most 20000 characters"),
     ({"id": "t", "q": "w" * 30, "a": "ok"}, "data row 2: text has 30 characters; the service takes at most 20"),
     ],
)
def test_import_refuses_what_the_api_refuses_naming_the_row(env, monkeypatch, tmp_path, capsys, row, problem):
    monkeypatch.setenv("QSIM_MAX_QUESTION_CHARS", "20")
    get_settings.cache_clear()
    path = write_csv(tmp_path / "rows.csv", [{"id": "ok", "q": "a fine question", "a": "yes"}, row])
    assert main(["import", "--file", str(path), "--text-column", "q", "--external-id-column", "id",
                 "--answer-column", "a"]) == 2
    error = capsys.readouterr().err
    assert problem in error and error.count("\n") == 1, error
    assert stored(env)[0] == {}  # nothing written, the good row included


def test_a_misspelt_optional_column_is_an_error_not_a_silent_blank(env, tmp_path, capsys):
    path = write_csv(tmp_path / "desk.csv", [{"id": "a1", "q": "Where is my card?", "answer": "In the post."}])
    for flag in ("--external-id-column", "--answer-column", "--metadata-column"):
        assert main(["import", "--file", str(path), "--text-column", "q", flag, "nope", "--no-progress"]) == 2
        assert "no row has a column 'nope' (columns: answer, id, q)" in capsys.readouterr().err
    assert stored(env)[0] == {}


def test_a_csv_with_a_byte_order_mark_imports_like_any_other(env, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("id,q\r\na1,Where is my card?\r\n".encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    assert main(["import", "--file", str(path), "--text-column", "q", "--external-id-column", "id", "--no-progress"]) == 0
    assert stored(env)[0] == {"a1": ("Where is my card?", None, None)}


def test_a_batch_size_below_one_is_refused(env, tmp_path, capsys):
    path = write_csv(tmp_path / "desk.csv", [{"q": "Where is my card?"}])
    for size in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["import", "--file", str(path), "--text-column", "q", "--batch-size", size])
        assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert stored(env)[0] == {}


def test_a_directory_for_a_file_says_so(env, tmp_path, capsys):
    assert main(["import", "--file", str(tmp_path), "--text-column", "q"]) == 2
    assert "is a directory, not a file" in capsys.readouterr().err
