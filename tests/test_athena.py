"""The Athena path, tested without AWS.

AWS cannot be reached from this machine, so two stand-ins take its place, each named in the
tests that use it:

- the Athena SQL is parsed as Trino SQL by sqlglot, transpiled to DuckDB and run there on the
  same generated rows as the SQLite and PostgreSQL tests, against the same pandas oracle;
- PyAthena talks to moto's Athena server on loopback, which answers the real API calls
  (submission, polling, result fetch, statistics) but runs no SQL: each query returns the next
  result queued on the server.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import duckdb
import pytest
import sqlglot

from drivendata.database import COLUMNS, explain, reader, source_from
from drivendata.panels import (
    FIELDS,
    PANELS,
    Meter,
    Query,
    data_version,
    run,
    statements,
)

from . import test_panels
from .conftest import NOW, ROWS, Dataset
from .oracle import Oracle

STAGING = "s3%3A%2F%2Fdd-results%2Fathena%2F"
URL = (
    f"awsathena+rest://@athena.us-east-1.amazonaws.com:443/streaming_layer?s3_staging_dir={STAGING}"
)
TABLE = "streaming_layer.streaming_data"
CASES = test_panels.CASES


def athena(url: str = URL) -> Any:
    return source_from(url, TABLE)


# ---------------------------------------------------------------- the SQL itself


@pytest.mark.parametrize(("field", "window"), CASES)
def test_every_statement_parses_as_trino_sql(field: str, window: str) -> None:
    """sqlglot's Trino and Athena grammars stand in for Athena's own parser."""
    for name, stmt in statements(athena(), Query(field=field, window=window)).items():
        for dialect in ("athena", "trino"):
            parsed = sqlglot.parse_one(stmt.literal(), read=dialect)
            assert parsed is not None, (name, dialect)


def test_the_window_is_pushed_into_every_scan() -> None:
    """A table partitioned by time scans only the window's partitions."""
    for name, stmt in statements(athena(), Query(window="24h")).items():
        scans = stmt.literal().count("FROM streaming_layer.streaming_data")
        assert stmt.literal().count("accessed_at >= '") >= scans, name


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB stands in for Athena's engine, holding the rows the other databases hold."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA streaming_layer")
    types = {"INT": "INTEGER", "BIGINT": "BIGINT"}
    cols = ", ".join(f"{n} {types.get(t, 'VARCHAR')}" for n, t in COLUMNS)
    con.execute(f"CREATE TABLE {TABLE} ({cols})")
    con.executemany(f"INSERT INTO {TABLE} VALUES ({', '.join('?' * len(COLUMNS))})", ROWS)
    yield con
    con.close()


def duck_run(con: duckdb.DuckDBPyConnection, name: str, q: Query) -> Any:
    sql = sqlglot.transpile(statements(athena(), q)[name].literal(), read="athena", write="duckdb")
    frame = con.execute(sql[0]).df()
    return PANELS[name].shape(frame, q)


@pytest.fixture(scope="module")
def duck_results(duck: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (field, window): {
            name: duck_run(duck, name, Query(field=field, window=window, now=NOW))
            for name in PANELS
        }
        for field, window in CASES
    }


EXACT = ["top_traffic", "top_people", "timeline", "histogram", "age_groups"]


@pytest.mark.parametrize("panel", EXACT)
@pytest.mark.parametrize(("field", "window"), CASES)
def test_athena_sql_gives_the_same_numbers(
    duck_results: dict, panel: str, field: str, window: str
) -> None:
    """The Athena SQL, run by DuckDB after transpiling, agrees with the pandas oracle."""
    check = getattr(test_panels, f"test_{panel}")
    check(Dataset(athena(), ROWS, NOW), duck_results, field, window)


@pytest.mark.parametrize(("field", "window"), CASES)
def test_athena_summary_gives_the_same_numbers(duck_results: dict, field: str, window: str) -> None:
    got = dict(duck_results[field, window]["summary"])
    got.pop("version")
    assert got == Oracle(ROWS, NOW, window).summary(field, "consumed_traffic")


@pytest.mark.parametrize(("field", "window"), CASES)
def test_athena_quartiles_are_close_and_marked_approximate(
    duck_results: dict, field: str, window: str
) -> None:
    """approx_percentile (DuckDB's APPROX_QUANTILE here) misses the exact rank by at most 1 %
    of the rows, or one row on small samples: each quartile lies between the values there."""
    got = duck_results[field, window]["distribution"]
    oracle = Oracle(ROWS, NOW, window)
    want = oracle.distribution(field)
    values = oracle.values(field)
    assert got["count"] == want["count"] == len(values)
    assert got.get("approximate") is True

    def number(v: Any) -> float:
        if hasattr(v, "year"):
            return (v - datetime(1970, 1, 1)).total_seconds()
        return float(v)

    for key in ("min", "max", "mean"):
        assert number(got[key]) == pytest.approx(want[key], abs=1e-3)
    slack = max(1, math.ceil(0.01 * len(values)))
    for key, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
        rank = p * (len(values) - 1)
        low = values[max(0, math.floor(rank) - slack)]
        high = values[min(len(values) - 1, math.ceil(rank) + slack)]
        assert low - 1e-6 <= number(got[key]) <= high + 1e-6, key


# ---------------------------------------------------------------- PyAthena against moto


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's Athena server on loopback stands in for the AWS service."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> str:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    return moto_url


def queue(moto_url: str, *results: tuple[list[str], list[str], list[tuple[Any, ...]]]) -> None:
    """Queue results on the moto server: (names, Athena types, rows) per query, in order."""
    payload = []
    for names, types, rows in results:
        header = {"Data": [{"VarCharValue": n} for n in names]}
        data = [
            {"Data": [{"VarCharValue": None if v is None else str(v)} for v in row]} for row in rows
        ]
        info = [
            {
                "CatalogName": "hive",
                "SchemaName": "",
                "TableName": "",
                "Name": n,
                "Label": n,
                "Type": t,
                "Precision": 19 if t == "bigint" else 2147483647,
                "Scale": 0,
                "Nullable": "UNKNOWN",
                "CaseSensitive": t == "varchar",
            }
            for n, t in zip(names, types, strict=True)
        ]
        payload.append({"rows": [header, *data], "column_info": info})
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/athena/query-results",
        data=json.dumps({"results": payload}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201 or answer.status == 200


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What PyAthena submitted to moto; moto reports 1,234,567 bytes scanned per query."""
    from moto.athena.responses import AthenaResponse

    seen: list[dict[str, Any]] = []
    start = AthenaResponse.start_query_execution
    describe = AthenaResponse.get_query_execution

    def record(self: AthenaResponse) -> str:
        seen.append(json.loads(self.body))
        return start(self)

    def scanned(self: AthenaResponse) -> str:
        answer = json.loads(describe(self))
        answer["QueryExecution"]["Statistics"]["DataScannedInBytes"] = 1_234_567
        return json.dumps(answer)

    monkeypatch.setattr(AthenaResponse, "start_query_execution", record)
    monkeypatch.setattr(AthenaResponse, "get_query_execution", scanned)
    return seen


def test_a_panel_runs_end_to_end_through_pyathena(aws: str, submitted: list) -> None:
    """Submission, polling, result fetch and bytes scanned, against moto's Athena server."""
    people = [(f"Person {i:02d}", 800 - i) for i in range(10)]
    queue(aws, (["person_name", "value"], ["varchar", "integer"], people))
    source = athena()
    meter = Meter()
    q = Query(field="upload_speed", window="24h", now=NOW)
    with reader(source).connect() as conn:
        got = run(conn, source, "top_people", q, meter)
    assert list(got["person_name"]) == [p for p, _ in people]
    assert list(got["value"]) == [v for _, v in people]
    assert meter.queries == 1 and meter.scanned_bytes == 1_234_567
    sent = submitted[-1]
    assert sent["QueryString"].strip() == statements(source, q)["top_people"].literal().strip()
    assert sent["ResultConfiguration"]["OutputLocation"] == "s3://dd-results/athena/"
    reuse = sent["ResultReuseConfiguration"]["ResultReuseByAgeConfiguration"]
    assert reuse == {"Enabled": True, "MaxAgeInMinutes": 60}


def test_the_data_version_and_summary_come_back(aws: str, submitted: list) -> None:
    queue(aws, (["version"], ["varchar"], [("42.2026-11-28 11:59:00.000001",)]))
    source = athena()
    with reader(source).connect() as conn:
        assert data_version(conn, source, NOW) == "42.2026-11-28 11:59:00.000001"
    assert "accessed_at >= '2026-11-27 12:00:00.000000'" in submitted[-1]["QueryString"]


def test_missing_credentials_are_one_sentence(
    aws: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No credentials anywhere: connecting succeeds, executing fails, as on AWS."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    source = athena()
    with pytest.raises(Exception) as caught, reader(source).connect() as conn:
        data_version(conn, source, NOW)
    sentence = explain(caught.value, source)
    assert sentence.startswith("No AWS credentials were found for Athena")


def test_a_missing_workgroup_is_one_sentence(aws: str) -> None:
    source = athena(URL + "&work_group=nope")
    with pytest.raises(Exception) as caught, reader(source).connect() as conn:
        data_version(conn, source, NOW)
    assert explain(caught.value, source).startswith("The Athena workgroup named in")


@pytest.mark.parametrize(
    ("message", "start"),
    [
        (
            "An error occurred (AccessDeniedException) when calling the StartQueryExecution "
            "operation: User: arn:aws:sts::1:assumed-role/dd is not authorized to perform: "
            "athena:StartQueryExecution",
            "AWS denied the dashboard's role access",
        ),
        (
            "TABLE_NOT_FOUND: line 3:6: Table 'awsdatacatalog.streaming_layer.streaming_data' "
            "does not exist",
            "The table streaming_layer.streaming_data does not exist in Athena's catalog",
        ),
        (
            "An error occurred (InvalidRequestException) when calling the StartQueryExecution "
            "operation: Unable to verify/create output bucket dd-results (Service: Amazon S3; "
            "Status Code: 404; Error Code: NoSuchBucket)",
            "Athena cannot write query results to the staging bucket",
        ),
        ("Query was cancelled by user", "Athena cancelled the query"),
        (
            "EXCEEDED_TIME_LIMIT: Query exceeded maximum time limit of 30.00m",
            "Athena did not finish the query in time",
        ),
    ],
)
def test_athena_failures_are_one_sentence(message: str, start: str) -> None:
    """Athena's own error texts, as it reports them, stand in for failures moto cannot make."""
    sentence = explain(RuntimeError(message), athena())
    assert sentence.startswith(start)
    assert "\n" not in sentence and sentence.endswith(".")


def test_sql_and_display_never_show_keys() -> None:
    source = source_from(
        "awsathena+rest://AKIAEXAMPLE:wJalrXUtnFEMI@athena.eu-west-1.amazonaws.com:443/"
        f"streaming_layer?s3_staging_dir={STAGING}&aws_session_token=tok123",
        TABLE,
    )
    for text in [source.display, *(s.literal() for s in statements(source, Query()).values())]:
        assert "wJalrXUtnFEMI" not in text and "tok123" not in text and "AKIAEXAMPLE" not in text


def test_every_field_has_athena_sql() -> None:
    for field in FIELDS:
        assert len(statements(athena(), Query(field=field))) == len(PANELS)


def test_check_works_on_athena(aws: str) -> None:
    """`drivendata check` against moto's Athena: the column probe, then the row count."""
    from click.testing import CliRunner

    from drivendata.cli import main

    queue(
        aws,
        ([n for n, _ in COLUMNS], ["varchar"] * len(COLUMNS), []),
        (["_col0"], ["bigint"], [(1234,)]),
    )
    result = CliRunner().invoke(main, ["check", "--url", URL, "--table", TABLE])
    assert result.exit_code == 0, result.output
    assert "1,234 rows" in result.output and "Athena" in result.output
