"""Every setting, declared once: name, default, help, environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _default_store() -> str:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{base / 'drivendata' / 'drivendata.db'}"


def _default_cache() -> str:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return str(base / "drivendata" / "cache")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str

    @property
    def env(self) -> str:
        return f"DRIVENDATA_{self.name.upper()}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        _default_store(),
        "SQLAlchemy URL of the source: sqlite:///path.db (the embedded store, created on "
        "first use) or postgresql://user:password@host:5432/db.",
    ),
    Setting(
        "table",
        "streaming_layer.streaming_data",
        "Schema-qualified name of the sessions table, the same on every source.",
    ),
    Setting("field", "upload_speed", "Field the panels show when none is picked."),
    Setting("window", "all", "Time window on accessed_at: 15m, 1h, 24h, 7d or all."),
    Setting("timeline_buckets", "1000", "Most time buckets the timeline panel returns."),
    Setting("histogram_bins", "30", "Equal-width bins of the histogram panel."),
    Setting(
        "pg_parallel_workers",
        "0",
        "PostgreSQL parallel workers each statement of a refresh may use (never more than the "
        "server's max_parallel_workers_per_gather), or 'server' for the server's own. A refresh "
        "already runs two statements at once: 0 suits a server of two cores; on one of many, "
        "try half its cores less one.",
    ),
    Setting(
        "people",
        "names",
        "How the panels show people: names, initials (A. P.), or pseudonyms (Person K7Q2MXA4, "
        "the same for a person everywhere) for audiences that must not see who is who.",
    ),
    Setting(
        "pseudonym_key",
        "",
        "Secret that makes pseudonyms impossible to tell back from likely names; empty: a "
        "random key made once and kept in the cache directory.",
    ),
    Setting(
        "stream_rate",
        "0.5",
        "Rows per second that `drivendata stream` inserts (fractions allowed).",
    ),
    Setting(
        "athena_result_reuse_minutes",
        "60",
        "On Athena, answer a query already run within this many minutes from its stored result "
        "instead of scanning again (PyAthena result reuse); 0 turns reuse off.",
    ),
    Setting(
        "athena_price_per_tb",
        "5",
        "US dollars Athena charges per terabyte scanned, to price each refresh in the status line.",
    ),
    Setting(
        "athena_min_refresh",
        "60",
        "Fewest seconds between automatic refreshes on Athena, whatever interval a viewer picks.",
    ),
    Setting(
        "athena_max_scan_gb",
        "10",
        "Gigabytes one refresh may scan on Athena; a refresh that scans more pauses automatic "
        "refresh with a message saying so.",
    ),
    Setting(
        "max_kernels",
        "8",
        "Most kernels serving viewers at once; visitors beyond it get the 'at capacity' page "
        "(HTTP 503).",
    ),
    Setting(
        "drop_timeout",
        "15",
        "Seconds a viewer's kernel may have no open page before it is shut down.",
    ),
    Setting(
        "preheat",
        "1",
        "Kernels kept running the notebook before anyone visits, for a faster first paint; "
        "0 for none.",
    ),
    Setting(
        "stream_buffer",
        "100000",
        "Most unwritten rows the stream generator keeps while the database is away.",
    ),
    Setting(
        "cache",
        "on",
        "Share panel results between all viewers (kernels) through the result cache; off to "
        "have every viewer query the source itself.",
    ),
    Setting(
        "cache_dir",
        _default_cache(),
        "Directory of the shared result cache; every kernel of a server must see the same one.",
    ),
    Setting(
        "cache_megabytes",
        "64",
        "Most megabytes of results the cache keeps; least recently used go first.",
    ),
    Setting(
        "cache_wait",
        "30",
        "Most seconds a viewer waits for another that is computing the same panels, before "
        "computing them itself.",
    ),
    Setting(
        "cache_slot",
        "60",
        "Seconds a cached result answers for at most, even when the data did not change "
        "(the panels depend on the time: windows move, rows age).",
    ),
)

# Serving in a container or the cloud: who may open the page, and which notebook it is.
SETTINGS += (
    Setting(
        "token",
        "",
        "Shared token a viewer needs to open the page (read it from a secret); empty: none on "
        "loopback, a random one (printed at start) on any other address.",
    ),
    Setting(
        "open_access",
        "0",
        "1 serves the page without a token on any address, on purpose: for example behind "
        "single sign-on at the load balancer.",
    ),
    Setting("notebook", "", "Path of the notebook to serve; empty: the dashboard's own."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def get(name: str) -> str:
    """Return a setting's value: its environment variable if set, else its default."""
    setting = _BY_NAME[name]
    value = os.environ.get(setting.env, "").strip()
    return value or setting.default


def env(name: str) -> str:
    """Return the environment variable of a setting."""
    return _BY_NAME[name].env


def get_int(name: str, *, minimum: int = 1) -> int:
    """Return a whole-number setting, with one clear sentence when it is not one."""
    raw = get(name)
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(
            f"{_BY_NAME[name].env}={raw!r} is not a whole number; set it to one, "
            f"for example {_BY_NAME[name].default}."
        ) from None
    if value < minimum:
        raise SettingError(
            f"{_BY_NAME[name].env}={raw!r} is too small; set it to {minimum} or more."
        )
    return value


def get_float(name: str) -> float:
    """Return a positive number setting, with one clear sentence when it is not one."""
    raw = get(name)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingError(
            f"{_BY_NAME[name].env}={raw!r} is not a positive number; set it to one, "
            f"for example {_BY_NAME[name].default}."
        )
    return value


class SettingError(ValueError):
    """A setting has a value that cannot be used."""
