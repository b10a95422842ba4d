"""Secrets: the database password never appears in the page, errors, logs or CLI output.

The PostgreSQL server here trusts local connections, so it accepts any password: URLs carry
one (``S3cretPw``) and still connect, and a closed port, a missing database and a missing table
produce the real errors. Athena cannot be reached from this machine (no AWS): its URL form is
checked through ``display``, the printed SQL and :func:`explain` on Athena's own error texts,
which stand in for the service's answers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import ipywidgets as widgets
import plotly.graph_objects as go
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from drivendata.cli import main
from drivendata.dashboard import Dashboard
from drivendata.database import SourceError, explain, reader, source_from, table_sql
from drivendata.panels import Query, statements
from drivendata.stream import Generator

from .conftest import NOW, load

PASSWORD = "S3cretPw"
ODD = "p@ss:w/rd?S3cret"  # a password with every character a URL gives meaning to
HOST = "127.0.0.1:5432"
KEY_ID, KEY, TOKEN = "AKIAEXAMPLEKEYID", "wJalrXUtnFEMIsecretKEY", "FwoGZXIvYXdzEtoken"
ATHENA = (
    f"awsathena+rest://{KEY_ID}:{KEY}@athena.eu-west-1.amazonaws.com:443/streaming_layer"
    f"?s3_staging_dir=s3%3A%2F%2Fdd-results%2F&aws_session_token={TOKEN}"
)
SECRETS = [PASSWORD, ODD, quote(ODD, safe=""), KEY_ID, KEY, TOKEN]


def clean(text: str) -> str:
    """Return the text after checking that no secret, plain or URL-encoded, is in it."""
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in: {text[:2000]}"
    return text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


@pytest.fixture
def pg(pg_schema: str) -> Iterator[tuple[str, str]]:
    """A URL with a password and a table with a few sessions; yields (url, table)."""
    table = f"{pg_schema}.streaming_data"
    url = f"postgresql://postgres:{PASSWORD}@{HOST}/test"
    load(source_from(url, table), Generator(3).rows([NOW] * 40))
    yield url, table


def failing_urls(table: str) -> dict[str, tuple[str, str, str]]:
    """URL, table and the words of the sentence, for each failure a person can cause."""
    port = closed_port()
    return {
        "closed port": (
            f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test",
            table,
            "reached",
        ),
        "no database": (
            f"postgresql://postgres:{PASSWORD}@{HOST}/no_such_db_{port}",
            table,
            "does not exist",
        ),
        "no table": (f"postgresql://postgres:{PASSWORD}@{HOST}/test", "nope.nothing", "does not"),
        "password in the query": (
            f"postgresql://postgres@127.0.0.1:{port}/test?password={PASSWORD}",
            table,
            "reached",
        ),
        "odd password": (
            f"postgresql://postgres:{quote(ODD, safe='')}@127.0.0.1:{port}/test",
            table,
            "reached",
        ),
    }


# ---------------------------------------------------------------- URLs and sentences


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{PASSWORD}@{HOST}/test",
        f"postgresql+psycopg2://postgres:{PASSWORD}@{HOST}/test",
        f"postgresql://postgres@{HOST}/test?password={PASSWORD}",
        f"postgresql://postgres@{HOST}/test?sslpassword={PASSWORD}&PASSWORD={PASSWORD}",
        f"postgresql://postgres:{quote(ODD, safe='')}@{HOST}/test",
        f"postgresql://postgres:{ODD}@{HOST}/test",  # '@' not encoded
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/test",
        f"postgresql://postgres@127.0.0.1:notaport/test?password={PASSWORD}",
        f"postgresql://postgres:{PASSWORD}@[::1:5432/test",
        f"postgres ql://postgres:{PASSWORD}@{HOST}/test",
        f"mysql://root:{PASSWORD}@{HOST}/test",
        ATHENA,
        ATHENA.replace("aws_session_token", "aws_secret_access_key"),
    ],
)
def test_a_url_is_shown_without_its_secrets(url: str) -> None:
    """Whether the URL is read or refused, what people see of it holds no secret."""
    try:
        source = source_from(url, "streaming_layer.streaming_data")
    except SourceError as exc:
        clean(str(exc))
        assert str(exc).endswith(".") and "\n" not in str(exc)
        return
    clean(source.display)
    clean(source.label)
    clean(repr(source))


def test_real_failures_are_explained_without_the_password(pg: tuple[str, str]) -> None:
    url, table = pg
    for kind, (bad_url, bad_table, words) in failing_urls(table).items():
        source = source_from(bad_url, bad_table)
        with pytest.raises(sa.exc.DBAPIError) as caught, reader(source).connect() as conn:
            conn.execute(sa.text(f"SELECT COUNT(*) FROM {table_sql(source)}"))
        sentence = clean(explain(caught.value, source))
        assert words in sentence, (kind, sentence)
    source = source_from(url, table)
    cases = {  # a missing column, a write on a read-only connection, a syntax error
        "no column": "SELECT no_such_column FROM {t}",
        "read-only": "DELETE FROM {t}",
        "syntax": "SELEC 1 FROM {t}",
    }
    for sql in cases.values():
        with pytest.raises(sa.exc.DBAPIError) as caught, reader(source).connect() as conn:
            conn.execute(sa.text(sql.format(t=table_sql(source))))
        clean(explain(caught.value, source))


DRIVER_TEXTS = [
    "connection to server failed: Connection refused",
    'FATAL: password authentication failed for user "postgres"',
    'relation "x.y" does not exist',
    'column "x" does not exist',
    'database "nope" does not exist',
    "cannot execute DELETE in a read-only transaction",
    "unable to open database file",
    "database is locked",
    "database or disk is full",
    "file is not a database",
    "Unable to locate credentials",
    "An error occurred (AccessDeniedException): not authorized",
    "WorkGroup nope is not found",
    "NoSuchBucket: bucket does not exist",
    "TABLE_NOT_FOUND: Table 'x' does not exist",
    "Query was cancelled by user",
    "EXCEEDED_TIME_LIMIT: Query exceeded maximum time limit",
    "something no rule knows",
]


@pytest.mark.parametrize("text", DRIVER_TEXTS)
@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        (f"postgresql://postgres:{PASSWORD}@{HOST}/test", [PASSWORD]),
        (f"postgresql://postgres@{HOST}/test?password={PASSWORD}", [PASSWORD]),
        (f"postgresql://postgres:{quote(ODD, safe='')}@{HOST}/test", [ODD, quote(ODD, safe="")]),
        (ATHENA, [KEY_ID, KEY, TOKEN]),
        ("sqlite:////tmp/drivendata-secrets.db", []),
    ],
)
def test_every_explained_failure_keeps_secrets_out(url: str, secrets: list[str], text: str) -> None:
    """Each kind of failure explain() knows, even when the driver's text quotes the URL back.

    Some drivers put the connection string into their messages; explain() must not pass it on.
    """
    source = source_from(url, "streaming_layer.streaming_data")
    echoed = f"{text} (connecting to {url}; dsn: {' '.join(f'password={s}' for s in secrets)})"
    for exc in (RuntimeError(text), RuntimeError(echoed)):
        sentence = clean(explain(exc, source))
        assert "\n" not in sentence and sentence.endswith(".")


# ---------------------------------------------------------------- the page


def page(d: Dashboard) -> str:
    """What the page receives of the dashboard: every widget's traits, figures whole.

    (Outside a kernel the widgets have no comm to serialize through, so the traits are read
    directly; they are what the front end is sent.)
    """
    parts: list[str] = []
    todo: list[widgets.Widget] = [d]
    while todo:
        w = todo.pop()
        if isinstance(w, go.FigureWidget):
            parts.append(w.to_json())
            continue
        traits = {k: getattr(w, k) for k in w.keys if k != "children"}
        parts.append(json.dumps(traits, default=str))
        todo.extend(getattr(w, "children", ()))
    assert len(parts) > 10  # header, controls, status, six figures...
    return "\n".join(parts)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("DRIVENDATA_CACHE", "off")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return monkeypatch


def test_the_page_never_shows_the_password(
    pg: tuple[str, str], env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, table = pg
    cases = {"working": (url, table, "40 rows")} | failing_urls(table)
    cases["unreadable URL"] = (
        f"postgresql://postgres@127.0.0.1:notaport/test?password={PASSWORD}",
        table,
        "cannot be read",
    )
    for kind, (any_url, any_table, words) in cases.items():
        env.setenv("DRIVENDATA_DATABASE_URL", any_url)
        env.setenv("DRIVENDATA_TABLE", any_table)
        d = Dashboard.from_settings(autostart=False, interval="off")
        try:
            d.refresh_now()
            status = clean(d.status.value)
            assert words in status, (kind, status)
            clean(d.header.value)
            clean(page(d))
        finally:
            d.close()


# ---------------------------------------------------------------- logs and the command


ROWS = {"check": (), "panels": (), "seed": ("--rows", "20", "--days", "1")}


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    return (result.output or "") + (str(result.exception) if result.exception else "")


def test_logs_and_commands_never_show_the_password(
    pg: tuple[str, str], env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Every command, working and failing, with every logger at DEBUG (SQLAlchemy's too)."""
    url, table = pg
    bad = failing_urls(table)
    for name in (None, "sqlalchemy", "psycopg", "drivendata"):  # SQLAlchemy's own default is WARN
        caplog.set_level(logging.DEBUG, logger=name)
    outputs = [
        run_cli("check", "--url", url, "--table", table),
        run_cli("panels", "--url", url, "--table", table, "--format", "json"),
        run_cli("panels", "--url", url, "--table", table),
        run_cli("sql", "--url", url, "--table", table),
        run_cli("stream", "--url", url, "--table", table, "--rows", "3", "--rate", "50"),
        run_cli("seed", "--url", url, "--table", table, "--rows", "20", "--days", "1"),
    ]
    assert "OK:" in outputs[0] and "40 rows" in outputs[0]
    assert "wrote 3" in outputs[4].lower() and "wrote 20 rows" in outputs[5].lower()
    for kind, (bad_url, bad_table, words) in bad.items():
        # seed makes a missing table: it fails only where the server cannot be used
        for command in ("check", "panels") if kind == "no table" else ("check", "panels", "seed"):
            out = run_cli(command, "--url", bad_url, "--table", bad_table, *ROWS[command])
            assert words in out, (command, bad_url, out)
            outputs.append(out)
    env.setenv("DRIVENDATA_DATABASE_URL", url)
    env.setenv("DRIVENDATA_TABLE", table)
    d = Dashboard.from_settings(autostart=False, interval="off")
    assert d.refresh_now()
    d.close()
    for out in outputs:
        clean(out)
    # the logs were on: connections opened and statements run
    assert any(r.name.startswith("sqlalchemy.pool") for r in caplog.records)
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)
    clean(caplog.text)
    clean("\n".join(str(r.args) for r in caplog.records))


def test_sql_output_never_shows_secrets() -> None:
    """`drivendata sql` needs no connection: it prints for URLs that lead nowhere too."""
    for url in (
        f"postgresql://postgres:{PASSWORD}@db.example:5432/sessions",
        f"postgresql://postgres@db.example:5432/sessions?password={PASSWORD}",
        f"postgresql://postgres:{quote(ODD, safe='')}@db.example:5432/sessions",
        ATHENA,
    ):
        out = clean(run_cli("sql", "--url", url, "--field", "accessed_at", "--window", "24h"))
        assert out.count("-- ") >= 7, out
        for stmt in statements(source_from(url), Query()).values():
            clean(stmt.literal())


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("drivendata")), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_real_processes_print_no_secret_on_stdout_or_stderr(tmp_path: Path) -> None:
    """The installed command in a process of its own: stderr holds warnings and tracebacks too.

    `stream` towards a closed port retries until stopped: it is stopped (SIGTERM) once it has
    said the database cannot be written to.
    """
    port = closed_port()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    env = {"DRIVENDATA_DATABASE_URL": url, "PYTHONWARNINGS": "always"}
    check = command("check", env=env)
    out, err = check.communicate(timeout=120)
    assert check.returncode == 1 and "cannot be reached" in err, (out, err)
    clean(out + err)
    stream = command("stream", "--rows", "2", "--rate", "50", env=env)
    assert stream.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = stream.stdout.readline()
        lines.append(line)
        if "Cannot write" in line or not line:
            break
    stream.terminate()
    out, err = stream.communicate(timeout=60)
    text = "".join(lines) + out + err
    assert "Cannot write to the database" in text and "cannot be reached" in text, text
    clean(text)
