"""The database connection: which source a URL names, read-only engines, the table's DDL."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool, QueuePool

from drivendata import settings

COLUMNS: tuple[tuple[str, str], ...] = (
    ("person_name", "VARCHAR(50)"),
    ("user_name", "VARCHAR(50)"),
    ("email", "VARCHAR(50)"),
    ("personal_number", "BIGINT"),
    ("birth_date", "VARCHAR(50)"),
    ("address", "VARCHAR(250)"),
    ("phone_number", "VARCHAR(25)"),
    ("mac_address", "VARCHAR(20)"),
    ("ip_address", "VARCHAR(20)"),
    ("iban", "VARCHAR(25)"),
    ("accessed_at", "VARCHAR(50)"),
    ("session_duration", "INT"),
    ("download_speed", "INT"),
    ("upload_speed", "INT"),
    ("consumed_traffic", "INT"),
    ("unique_id", "VARCHAR(50)"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

_SECRET_PARAMS = {"aws_secret_access_key", "aws_session_token", "password", "sslpassword"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SourceError(Exception):
    """A problem with the source, said in one sentence that names the fix."""


@dataclass(frozen=True)
class TableName:
    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def parse_table(text: str) -> TableName:
    """Check a table name against fixed rules: one or two plain identifiers joined by a dot."""
    parts = text.strip().split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise SourceError(
            f"The table name {text!r} is not allowed; use schema.table made of letters, "
            "digits and underscores, for example streaming_layer.streaming_data."
        )
    if len(parts) == 1:
        return TableName(None, parts[0])
    return TableName(parts[0], parts[1])


@dataclass(frozen=True)
class Source:
    """A database URL and table, as the settings name them."""

    url: URL
    table: TableName
    # PostgreSQL: the most parallel workers a statement of a refresh may use; None: the
    # server's own (see limit_parallel_workers)
    parallel_workers: int | None = None

    def __repr__(self) -> str:  # URL's own repr shows secrets passed as query parameters
        return f"Source({self.display!r}, {str(self.table)!r})"

    @property
    def kind(self) -> str:
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            return "sqlite"
        if backend in ("postgresql", "postgres"):
            return "postgresql"
        if backend == "awsathena":
            return "athena"
        raise SourceError(
            f"The database URL names {backend!r}, which DrivenData does not read; use a "
            "sqlite:///, postgresql:// or awsathena+rest:// URL."
        )

    @property
    def display(self) -> str:
        """The URL for people to see: never a password or key."""
        url = self.url
        if url.username and self.kind == "athena":  # an access key id
            url = url.set(username="***")
        secret = {k: "***" for k in url.query if k.lower() in _SECRET_PARAMS}
        if secret:
            url = url.update_query_dict(secret)
        return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")

    @property
    def label(self) -> str:
        names = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "athena": "Athena"}
        return f"{names[self.kind]} {self.table}"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.database or "drivendata.db").expanduser()


def source_from(url: str | None = None, table: str | None = None) -> Source:
    """Build the source from a URL and table name, or from the settings when not given.

    :param url: SQLAlchemy URL; ``postgresql://`` URLs are read with psycopg 3.
    :param table: schema-qualified table name.
    """
    text = (url or settings.get("database_url")).strip()
    try:
        parsed = make_url(text)
    except Exception:
        raise SourceError(
            f"The database URL {_hide(text)!r} cannot be read; write it like "
            "postgresql://user:password@host:5432/db or sqlite:///path/to/file.db."
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.host and "@" in parsed.host:
        raise SourceError(
            f"The database URL {_hide(text)!r} has an '@' in its user name or password; "
            "write it there as %40."
        )
    workers = _parallel_workers() if backend in ("postgresql", "postgres") else None
    source = Source(parsed, parse_table(table or settings.get("table")), workers)
    source.kind  # noqa: B018 - raises the clear error for an unknown backend now
    if source.kind == "sqlite" and source.url.database in (None, "", ":memory:"):
        raise SourceError(
            "The SQLite URL needs a file path, for example sqlite:////data/drivendata.db."
        )
    return source


def _parallel_workers() -> int | None:
    raw = settings.get("pg_parallel_workers")
    if raw.lower() == "server":
        return None
    if not raw.isdecimal():  # (isdigit() lets '²' through, which int() refuses)
        name = settings.env("pg_parallel_workers")
        raise SourceError(
            f"{name}={raw!r} is neither a whole number nor 'server'; set it to 0 or more, or "
            "to server to keep the server's own setting."
        )
    return int(raw)


def limit_parallel_workers(conn: sa.Connection, source: Source) -> None:
    """Let each statement of the connection's transaction use at most the source's
    ``parallel_workers`` (never more than the server allows).

    A refresh runs its statements two at a time, each on a connection of its own. PostgreSQL
    would also split each statement among parallel workers: on a server of two cores the
    processes then take turns. Here the three passes over a million rows took 1.27-1.35 s that
    way, and 0.85-1.02 s as two serial statements at a time (the same statements, interleaved
    runs). The setting is the transaction's own (set_config's is_local), undone when the
    connection goes back to the pool, so that a single panel run on its own keeps the server's
    parallel plans."""
    if source.kind != "postgresql" or source.parallel_workers is None:
        return
    conn.execute(
        sa.text(
            "SELECT set_config('max_parallel_workers_per_gather', :most, true)"
            " WHERE current_setting('max_parallel_workers_per_gather')::int > :workers"
        ),
        {"most": str(source.parallel_workers), "workers": source.parallel_workers},
    )


def _hide(text: str) -> str:
    """A URL that could not be parsed, with anything that may be a secret masked."""
    # up to the last "@": a password may hold an unencoded "@" of its own
    text = re.sub(r"(://[^:/@]*:).*@", r"\1***@", text)
    keys = "|".join(sorted(_SECRET_PARAMS))
    return re.sub(rf"(?i)([?&](?:{keys})=)[^&#]*", r"\1***", text)


def _secrets(source: Source) -> list[str]:
    """The secrets a source's URL holds, as written and percent-encoded, longest first."""
    url = source.url
    found = [url.password] if url.password else []
    if url.username and source.kind == "athena":  # an access key id
        found.append(url.username)
    for key, value in url.query.items():
        if key.lower() in _SECRET_PARAMS:
            found += [value] if isinstance(value, str) else list(value)
    found += [quote(str(s), safe="") for s in found]
    return sorted({str(s) for s in found if s}, key=len, reverse=True)


def _without_secrets(text: str, source: Source) -> str:
    for secret in _secrets(source):
        text = text.replace(secret, "***")
    return text


def _sqlite_connect(source: Source, *, read_only: bool, create: bool = True) -> sqlite3.Connection:
    path = source.sqlite_path.resolve()
    mode = "ro" if read_only else "rwc" if create else "rw"
    uri = f"file:{path.as_posix()}?mode={mode}"
    # A reader waits out a checkpoint; the writer gives up sooner and keeps its rows to retry.
    timeout = 30 if read_only else 5
    if source.table.schema is None:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout)
    else:
        # The schema name becomes the name the store file is attached under, so that the same
        # schema-qualified table name works on SQLite as on the server databases.
        conn = sqlite3.connect(":memory:", uri=True, check_same_thread=False, timeout=timeout)
        conn.execute("ATTACH DATABASE ? AS " + source.table.schema, (uri,))
    if not read_only:
        conn.execute(f"PRAGMA {source.table.schema or 'main'}.journal_mode=WAL")
        conn.execute(f"PRAGMA {source.table.schema or 'main'}.synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MB of pages per connection
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def reader(source: Source, **kwargs: Any) -> Engine:
    """Return an engine whose connections cannot write: SQLite ``mode=ro``, PostgreSQL
    ``default_transaction_read_only``.

    PostgreSQL sessions also turn off JIT compilation: it adds about a tenth of a second to
    each panel's statement here and saves nothing on scans of this size. And they raise
    ``work_mem`` to WORK_MEM where the server sets less: a pass grouped by expressions of
    several columns (values_sql) has few groups, but the planner takes them for many and would
    sort every row, spilling to disk, where it fits them in a hash table with this much."""
    if source.kind == "sqlite":
        ensure_store(source)
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: _sqlite_connect(source, read_only=True),
            poolclass=QueuePool,
            pool_size=4,
            **kwargs,
        )
        _follow_store(engine, source.sqlite_path)
        return engine
    if source.kind == "postgresql":
        engine = sa.create_engine(
            source.url,
            connect_args={
                "options": "-c default_transaction_read_only=on -c jit=off",
                "application_name": "drivendata",
                "connect_timeout": 5,
            },
            pool_pre_ping=True,
            pool_size=4,
            **kwargs,
        )
        sa.event.listen(engine, "connect", _raise_work_mem)
        return engine
    return sa.create_engine(
        source.url, poolclass=NullPool, connect_args=athena_connect_args(source), **kwargs
    )


# PostgreSQL's memory per sort or hash table of the panels' sessions, at least (see reader).
WORK_MEM = "16MB"


def _raise_work_mem(dbapi_conn: Any, _record: Any) -> None:
    with dbapi_conn.cursor() as cur:
        cur.execute(
            "SELECT set_config('work_mem', %(mem)s, false)"
            " WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(%(mem)s)",
            {"mem": WORK_MEM},
        )
    dbapi_conn.commit()  # a session's setting made in a transaction ends with it otherwise


def _follow_store(engine: Engine, path: Path) -> None:
    """Drop pooled connections to a store file that was moved, deleted or replaced.

    An open SQLite handle keeps reading the file it opened even after that file left the path:
    without this check a dashboard would show a moved store's rows as if nothing happened, and
    never see a store put in its place.
    """

    def identity() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def on_connect(dbapi_conn: Any, record: Any) -> None:
        record.info["store"] = identity()

    def on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if record.info.get("store") != identity():
            # reconnecting opens the file now at the path, or fails with "unable to open"
            raise sa.exc.InvalidatePoolError(f"{path} is no longer the file this connection read")

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "checkout", on_checkout)


def athena_connect_args(source: Source) -> dict[str, Any]:
    """PyAthena options the URL leaves unset: result reuse on by default, to cut scans."""
    minutes = settings.get_int("athena_result_reuse_minutes", minimum=0)
    args: dict[str, Any] = {}
    if "result_reuse_enable" not in source.url.query and minutes > 0:
        args["result_reuse_enable"] = True
        if "result_reuse_minutes" not in source.url.query:
            args["result_reuse_minutes"] = minutes
    return args


def writer(source: Source) -> Engine:
    """Return an engine for the stream generator, the only part that ever writes."""
    if source.kind == "sqlite":
        source.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        opened = False

        def connect() -> sqlite3.Connection:
            # Only the first connection may create the store: one that is moved or deleted
            # later must not be replaced by an empty file (whose opening would also take over
            # the old file's WAL, still used by its readers); the write fails and is retried.
            nonlocal opened
            conn = _sqlite_connect(source, read_only=False, create=not opened)
            opened = True
            return conn

        return sa.create_engine("sqlite://", creator=connect, poolclass=NullPool)
    if source.kind == "postgresql":
        return sa.create_engine(
            source.url,
            connect_args={"application_name": "drivendata-stream", "connect_timeout": 5},
            pool_pre_ping=True,
        )
    raise SourceError(
        "The stream generator writes only to SQLite or PostgreSQL; point "
        "DRIVENDATA_DATABASE_URL at one of them to generate data."
    )


def table_sql(source: Source) -> str:
    """The table's name as it goes into SQL, each part checked by :func:`parse_table`."""
    t = source.table
    return f"{t.schema}.{t.name}" if t.schema else t.name


def create_table(conn: sa.Connection, source: Source) -> None:
    """Create the schema and the table with the users' DDL, when missing."""
    if source.kind == "postgresql" and source.table.schema:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {source.table.schema}"))
    cols = ",\n  ".join(f"{name} {kind}" for name, kind in COLUMNS)
    conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {table_sql(source)} (\n  {cols}\n)"))
    if source.kind == "sqlite":
        create_store_indexes(conn, source)


def create_store_indexes(conn: sa.Connection, source: Source) -> None:
    """Add the panels' indexes to the embedded store (never to a user's server table)."""
    from drivendata.panels import SQLiteDialect

    for statement in SQLiteDialect(source).store_indexes():
        conn.execute(sa.text(statement))


def drop_store_indexes(conn: sa.Connection, source: Source) -> None:
    """Drop the embedded store's indexes, so that a large backfill need not update them."""
    schema = source.table.schema or "main"
    names = conn.execute(
        sa.text(
            f"SELECT name FROM {schema}.sqlite_master WHERE type = 'index' "
            "AND tbl_name = :t AND sql IS NOT NULL"
        ),
        {"t": source.table.name},
    ).scalars()
    for name in list(names):
        if re.fullmatch(r"\w+", name):
            conn.execute(sa.text(f'DROP INDEX {schema}."{name}"'))


def ensure_store(source: Source) -> None:
    """Create the embedded SQLite store with its table and indexes on first use."""
    if source.kind != "sqlite" or _has_table(source):
        return
    engine = writer(source)
    try:
        with engine.begin() as conn:
            create_table(conn, source)
    finally:
        engine.dispose()


def _has_table(source: Source) -> bool:
    path = source.sqlite_path
    if not path.exists():
        return False
    conn = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (source.table.name,)
        ).fetchone()
        return row is not None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def explain(exc: BaseException, source: Source) -> str:
    """Say in one sentence what went wrong with the source and how to fix it."""
    if isinstance(exc, SourceError):
        return str(exc)
    # a driver may quote the URL or its connection string back: never say a secret again
    text = _without_secrets(str(getattr(exc, "orig", None) or exc), source)
    low = text.lower()
    where = source.display
    table = str(source.table)
    if source.kind == "sqlite":
        if ("unable to open" in low or "no such file" in low) and not source.sqlite_path.exists():
            return (
                f"The SQLite store {source.sqlite_path} cannot be opened because it is missing "
                "(moved or deleted); put it back, or run `drivendata seed` to create a new one."
            )
        if "unable to open" in low or "no such file" in low:
            return (
                f"The SQLite store {source.sqlite_path} cannot be opened; check that the path "
                "exists and is readable, or run `drivendata seed` to create it."
            )
        if "locked" in low or "busy" in low:
            return (
                f"The SQLite store {source.sqlite_path} is locked by another writer; "
                "wait for that writer to finish."
            )
        if "disk" in low and ("full" in low or "i/o" in low):
            return f"The disk holding {source.sqlite_path} is full; free space on it."
        if "not a database" in low or "malformed" in low:
            return f"{source.sqlite_path} is not a SQLite database; point the URL at the store."
    if source.kind == "athena":
        sentence = _athena_sentence(text, low, source)
        if sentence:
            return sentence
    if "authentication" in low or ("role" in low and "does not exist" in low):
        return (
            f"The server at {where} refused the user name or password; fix the credentials "
            "in DRIVENDATA_DATABASE_URL."
        )
    if (
        "no such table" in low
        or "undefinedtable" in low
        or ("relation" in low and "does not exist" in low)
    ):
        return (
            f"The table {table} does not exist at {where}; create it, or set "
            "DRIVENDATA_TABLE to the table that holds the sessions."
        )
    if "no such column" in low or ("column" in low and "does not exist" in low):
        return (
            f"The table {table} lacks a column the dashboard needs ({_first_line(text)}); "
            "point DRIVENDATA_TABLE at a table with the sessions' columns."
        )
    if "database" in low and "does not exist" in low:
        return (
            f"The database named in {where} does not exist; fix the database name in "
            "DRIVENDATA_DATABASE_URL."
        )
    if any(
        s in low
        for s in (
            "connection refused",
            "could not connect",
            "connection failed",
            "timeout expired",
            "server closed the connection",
            "terminating connection",
            "name or service not known",
            "could not translate host",
            "the database system is",
            "connection is closed",
            "no route to host",
            "consuming input failed",
        )
    ):
        return (
            f"The database server at {where} cannot be reached; check that it is running "
            "and that host and port in DRIVENDATA_DATABASE_URL are right."
        )
    if "read-only" in low or "readonly" in low:
        return f"The source at {where} is read-only here; the dashboard never writes to it."
    return f"The query on {table} at {where} failed: {_first_line(text)}."


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line.rstrip(".")[:200]


def _athena_sentence(text: str, low: str, source: Source) -> str | None:
    where = source.display
    table = str(source.table)
    if "unable to locate credentials" in low or "nocredentialserror" in low:
        return (
            "No AWS credentials were found for Athena; provide them the standard AWS way "
            "(an instance or task role, AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY), never in the database URL."
        )
    if "accessdenied" in low or "access denied" in low or "not authorized" in low:
        return (
            f"AWS denied the dashboard's role access for {where} ({_first_line(text)}); grant "
            "it the Athena, Glue and S3 permissions listed in the README."
        )
    if "workgroup" in low and ("not exist" in low or "not found" in low):
        return (
            f"The Athena workgroup named in {where} does not exist; fix work_group in "
            "DRIVENDATA_DATABASE_URL or create the workgroup."
        )
    if "nosuchbucket" in low or "bucket does not exist" in low or "s3_staging_dir" in low:
        return (
            "Athena cannot write query results to the staging bucket; fix s3_staging_dir in "
            "DRIVENDATA_DATABASE_URL or give the role access to that bucket."
        )
    if (
        "table_not_found" in low
        or "schema_not_found" in low
        or ("table" in low and "does not exist" in low)
    ):
        return (
            f"The table {table} does not exist in Athena's catalog at {where}; set "
            "DRIVENDATA_TABLE to <glue database>.<table> of the sessions table."
        )
    if "cancelled" in low or "canceled" in low:
        return "Athena cancelled the query before it finished; the next refresh runs it again."
    if "timed out" in low or "timeout" in low or "exceeded_time_limit" in low:
        return (
            "Athena did not finish the query in time; pick a shorter window or raise the "
            "workgroup's query time limit."
        )
    return None
