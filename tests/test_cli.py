"""The `drivendata` command, the README and the notebooks, on real databases."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import nbformat
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from drivendata.cli import main
from drivendata.database import source_from, table_sql
from drivendata.panels import PANELS
from drivendata.settings import SETTINGS
from drivendata.stream import Stream

from .conftest import POSTGRES_URL, postgres_available

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_seed_then_panels_json_prints_all_seven_units(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    code, out = invoke("seed", "--url", url, "--rows", "2000", "--days", "3", "--seed", "1")
    assert code == 0, out
    assert "2,000 rows" in out
    code, out = invoke("panels", "--url", url, "--format", "json", "--field", "download_speed")
    assert code == 0, out
    data = json.loads(out)
    assert list(data) == list(PANELS)
    assert data["summary"]["rows"] == 2000
    assert len(data["top_people"]) == 10
    code, out = invoke("panels", "--url", url, "--window", "24h")
    assert code == 0 and "top_traffic" in out and "age_groups" in out


def test_sql_prints_each_statement_after_its_panel_name() -> None:
    for url in ("sqlite:////tmp/none.db", "postgresql://u:topsecret@db.example:5432/x"):
        code, out = invoke("sql", "--url", url, "--field", "accessed_at", "--window", "7d")
        assert code == 0, out
        names = re.findall(r"^-- (\w+)$", out, flags=re.M)
        assert names == list(PANELS)
        assert out.count(";\n") >= len(PANELS)
        assert "topsecret" not in out


def test_sql_statements_run_as_printed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    invoke("seed", "--url", url, "--rows", "500", "--days", "1", "--seed", "2")
    code, out = invoke("sql", "--url", url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"ATTACH DATABASE '{tmp_path / 'store.db'}' AS streaming_layer")
        for statement in out.split(";\n"):
            if statement.strip():
                conn.execute(sa.text(statement.replace(":", "\\:")))


def test_check_reports_the_row_count(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    invoke("seed", "--url", url, "--rows", "300", "--days", "1")
    code, out = invoke("check", "--url", url)
    assert code == 0 and "300 rows" in out


@pytest.mark.parametrize(
    ("url", "table", "words"),
    [
        ("nonsense://", None, "does not read"),
        ("::::", None, "cannot be read"),
        ("postgresql://postgres@127.0.0.1:1/test", None, "cannot be reached"),
        (POSTGRES_URL, "nope.sessions", "does not exist"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_here", None, "does not exist"),
        ("postgresql://nobody:wrong@127.0.0.1:5432/test", None, "refused"),
        (POSTGRES_URL, "bad;table", "not allowed"),
    ],
)
def test_check_says_what_is_wrong_in_one_sentence(url: str, table: str | None, words: str) -> None:
    args = ["check", "--url", url] + (["--table", table] if table else [])
    code, out = invoke(*args)
    assert code == 1
    assert words in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_check_names_a_missing_column(pg_schema: str) -> None:
    engine = sa.create_engine(source_from(POSTGRES_URL).url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {pg_schema}"))
        conn.execute(sa.text(f"CREATE TABLE {pg_schema}.sessions (person_name VARCHAR(50))"))
    engine.dispose()
    code, out = invoke("check", "--url", POSTGRES_URL, "--table", f"{pg_schema}.sessions")
    assert code == 1 and "lacks the column(s)" in out and "accessed_at" in out


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in readme, setting.env


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


def test_the_conda_environment_has_the_same_dependencies() -> None:
    import tomllib

    import yaml

    def name(spec: str) -> str:
        return re.split(r"[\[<>=!~ ]", spec.strip(), maxsplit=1)[0].lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(d) for d in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {name(d) for d in env["dependencies"] if isinstance(d, str)}
    assert wanted <= listed, wanted - listed


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_stream_loses_and_duplicates_nothing_when_connections_drop(pg_schema: str) -> None:
    """The generator's connections are killed mid-stream; every row made lands exactly once."""
    postgres_available()
    source = source_from(POSTGRES_URL, f"{pg_schema}.streaming_data")
    said: list[str] = []
    streamer = Stream(source, rate=400, seed=9, say=said.append)
    thread = threading.Thread(target=streamer.run, kwargs={"max_rows": 1500}, daemon=True)
    admin = sa.create_engine(source.url)
    thread.start()
    deadline = time.monotonic() + 60
    kills = 0
    while thread.is_alive() and time.monotonic() < deadline:
        with admin.connect() as conn:
            kills += conn.execute(
                sa.text(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'drivendata-stream'"
                )
            ).scalar_one()
        time.sleep(0.3)
    thread.join(timeout=30)
    assert not thread.is_alive()
    with admin.connect() as conn:
        total, distinct = conn.execute(
            sa.text(f"SELECT COUNT(*), COUNT(DISTINCT unique_id) FROM {table_sql(source)}")
        ).one()
    admin.dispose()
    assert kills > 0
    assert streamer.made == 1500
    assert total == distinct == 1500
    # an outage is said once and its end once, never once per failed try
    assert sum("Cannot write" in s for s in said) == sum(
        s.startswith("The database is back") for s in said
    )


def test_stream_keeps_its_rows_while_the_store_is_locked(tmp_path: Path) -> None:
    """A long writer holds the store's lock; the generator waits, says so once, then catches up."""
    import sqlite3

    path = tmp_path / "store.db"
    source = source_from(f"sqlite:///{path}", "streaming_layer.streaming_data")
    invoke("seed", "--url", f"sqlite:///{path}", "--rows", "10", "--days", "1")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    said: list[str] = []
    streamer = Stream(source, rate=50, seed=3, say=said.append)
    thread = threading.Thread(target=streamer.run, kwargs={"max_rows": 200}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not any("Cannot write" in s for s in said) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("locked" in s for s in said), said
    blocker.execute("ROLLBACK")
    blocker.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    check = sqlite3.connect(path)
    total, distinct = check.execute(
        "SELECT COUNT(*), COUNT(DISTINCT unique_id) FROM streaming_data"
    ).fetchone()
    check.close()
    assert total == distinct == 210
    assert sum("Cannot write" in s for s in said) == 1, said
    assert sum(s.startswith("The database is back") for s in said) == 1
