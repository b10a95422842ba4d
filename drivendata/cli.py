"""The `drivendata` command."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar

import click
import pandas as pd
import sqlalchemy as sa

from drivendata import settings
from drivendata.database import Source, SourceError, explain, reader, source_from
from drivendata.panels import FIELDS, WINDOWS, Query, QueryError, compute_all, statements
from drivendata.people import PEOPLE

F = TypeVar("F", bound=Callable[..., Any])


def source_options(func: F) -> F:
    """Add --url and --table, which default to the settings."""
    func = click.option(
        "--table",
        help="Schema-qualified table [env DRIVENDATA_TABLE, streaming_layer.streaming_data].",
    )(func)
    func = click.option(
        "--url", help="SQLAlchemy URL of the source [env DRIVENDATA_DATABASE_URL]."
    )(func)
    return func


def query_options(func: F) -> F:
    """Add --field, --versus and --window."""
    func = click.option(
        "--window", type=click.Choice(list(WINDOWS)), help="Time window on accessed_at."
    )(func)
    func = click.option(
        "--versus",
        type=click.Choice(list(FIELDS)),
        default="consumed_traffic",
        show_default=True,
        help="Field ranked against in top_traffic.",
    )(func)
    func = click.option("--field", type=click.Choice(list(FIELDS)), help="Field the panels show.")(
        func
    )
    return func


def fail(message: str) -> None:
    """Print one sentence and exit non-zero, never a traceback."""
    click.secho(message, fg="red", err=True)
    sys.exit(1)


def _source(url: str | None, table: str | None) -> Source:
    try:
        return source_from(url, table)
    except SourceError as exc:
        fail(str(exc))
        raise


def _query(**values: Any) -> Query:
    try:
        return Query.from_settings(**values)
    except (QueryError, settings.SettingError) as exc:
        fail(str(exc))
        raise


class Commands(click.Group):
    """The command group; the serving commands load Voilà only when they are asked for."""

    served = {"serve": "serve_command", "demo": "demo_command", "container": "container_command"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.served])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.served:
            from drivendata import server

            command: click.Command = getattr(server, self.served[cmd_name])
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """DrivenData Live: a real-time dashboard of a streaming sessions table.

    Example: drivendata seed --rows 100000 && drivendata panels --field download_speed
    """


@main.command()
@source_options
@click.option("--rows", type=click.IntRange(1), default=100_000, show_default=True)
@click.option("--days", type=click.FloatRange(0, min_open=True), default=30, show_default=True)
@click.option("--seed", "seed_", type=int, help="Make the rows the same on every run.")
def seed(url: str | None, table: str | None, rows: int, days: float, seed_: int | None) -> None:
    """Backfill ROWS synthetic sessions spread over the last DAYS days.

    Example: drivendata seed --rows 1000000 --days 30 --seed 1
    """
    from drivendata.stream import seed as backfill

    source = _source(url, table)
    try:
        written = backfill(source, rows, days, seed=seed_)
    except Exception as exc:
        fail(explain(exc, source))
    click.echo(f"Wrote {written:,} rows to {source.label} at {source.display}.")


@main.command()
@source_options
@click.option("--rate", type=float, help="Rows per second [env DRIVENDATA_STREAM_RATE, 0.5].")
@click.option("--seed", "seed_", type=int, help="Make the rows the same on every run.")
@click.option("--rows", "max_rows", type=click.IntRange(1), help="Stop after this many rows.")
def stream(
    url: str | None, table: str | None, rate: float | None, seed_: int | None, max_rows: int | None
) -> None:
    """Insert synthetic sessions continuously, like the ingestion pipeline, until Ctrl-C.

    Example: drivendata stream --rate 20
    """
    from drivendata.stream import Stream

    source = _source(url, table)
    try:
        rate = rate or settings.get_float("stream_rate")
        buffer = settings.get_int("stream_buffer")
    except settings.SettingError as exc:
        fail(str(exc))
        raise
    if rate <= 0:
        fail("The rate must be a positive number of rows per second, for example 0.5.")
    streamer = Stream(source, rate, seed=seed_, buffer=buffer, say=click.echo)
    signal.signal(signal.SIGTERM, lambda *_: streamer.stop())
    click.echo(f"Streaming {rate:g} rows/s into {source.label}; Ctrl-C stops.")
    try:
        written = streamer.run(max_rows=max_rows)
    except KeyboardInterrupt:
        streamer.stop()
        written = streamer.written
    click.echo(
        f"Made {streamer.made:,} rows, wrote {written:,}; {len(streamer.buffer):,} left unwritten."
    )


@main.command()
@source_options
@query_options
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--people",
    type=click.Choice(list(PEOPLE)),
    help="Show people by name, initials or pseudonyms (default: DRIVENDATA_PEOPLE).",
)
def panels(
    url: str | None,
    table: str | None,
    field: str | None,
    versus: str,
    window: str | None,
    fmt: str,
    people: str | None,
) -> None:
    """Print every panel for a field and window, computed in the database.

    Example: drivendata panels --field session_duration --window 24h --format json
    """
    source = _source(url, table)
    q = _query(field=field, versus=versus, window=window, people=people)
    try:
        # as the dashboard refreshes: two statements at a time, on connections of their own
        results = compute_all(reader(source), source, q)
    except Exception as exc:
        fail(explain(exc, source))
        raise
    if fmt == "json":
        click.echo(json.dumps({k: _jsonable(v) for k, v in results.items()}, indent=2))
        return
    for name, result in results.items():
        click.secho(f"\n{name}", bold=True)
        click.echo(_readable(result))


@main.command()
@source_options
@query_options
def sql(
    url: str | None, table: str | None, field: str | None, versus: str, window: str | None
) -> None:
    """Print the SQL each panel runs on the configured source; needs no connection.

    Example: drivendata sql --url postgresql://db.example/sessions --field download_speed
    """
    source = _source(url, table)
    q = _query(field=field, versus=versus, window=window)
    try:
        stmts = statements(source, q)
    except SourceError as exc:
        fail(str(exc))
        raise
    for name, stmt in stmts.items():
        click.echo(f"-- {name}\n{stmt.literal().rstrip()};\n")


@main.command()
@source_options
def check(url: str | None, table: str | None) -> None:
    """Connect, find the table, and report its row count, or say what is wrong.

    Example: drivendata check --url postgresql://postgres@127.0.0.1:5432/test
    """
    from drivendata.database import COLUMN_NAMES, table_sql

    source = _source(url, table)
    try:
        engine = reader(source)
        with engine.connect() as conn:
            result = conn.execute(sa.text(f"SELECT * FROM {table_sql(source)} WHERE 1 = 0"))
            missing = [c for c in COLUMN_NAMES if c not in set(result.keys())]
            if missing:
                fail(
                    f"The table {source.table} lacks the column(s) {', '.join(missing)}; "
                    "point DRIVENDATA_TABLE at a table with the sessions' columns."
                )
            count = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table_sql(source)}")).scalar()
    except SystemExit:
        raise
    except Exception as exc:
        fail(explain(exc, source))
        raise
    click.echo(f"OK: {source.label} at {source.display} has {count:,} rows.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return [
            {k: _jsonable(v) for k, v in row.items()} for row in value.to_dict(orient="records")
        ]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _readable(value: Any) -> str:
    if isinstance(value, pd.DataFrame):
        return "(no rows)" if value.empty else value.to_string(index=False)
    if isinstance(value, dict):
        width = max(len(k) for k in value)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in value.items())
    return str(value)
