"""What several commands share: a bounded whole-number argument, the admin API client and
the store a command reads."""

from __future__ import annotations

import argparse
import json


def count(low: int, high: int):
    """An argparse type: a whole number in [low, high], else a usage error saying so (a
    negative --limit had read every row on SQLite and crashed on PostgreSQL)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {text!r}")
        return value
    return parse


def is_store_error(exc: BaseException) -> bool:
    """An error of SQLite or PostgreSQL's driver (the latter only when it is installed)."""
    import sqlite3

    try:
        import psycopg

        return isinstance(exc, (sqlite3.Error, psycopg.Error))
    except ImportError:
        return isinstance(exc, sqlite3.Error)


def admin_call(url: str, path: str, *, body: dict | None = None, timeout: float = 120, method: str | None = None,
               missing_ok: bool = False) -> bytes:
    """One authenticated admin request (token from CLASSGUARD_ADMIN_TOKEN) to an http(s) `url`.

    A URL that is not http:// or https:// is a ValueError; a service that cannot be reached, does
    not answer in `timeout` seconds, answers with an error status or redirects is a one-line
    RuntimeError naming the URL. Redirects are not followed: the bearer token goes only to `url`.
    """
    import http.client
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"--url {url!r} is not a valid URL ({exc})") from None
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"--url {url!r} has a space or control character in it")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http:// or https:// URL of the running service, not {url!r}")
    token = os.environ.get("CLASSGUARD_ADMIN_TOKEN")
    if not token:
        raise ValueError("set CLASSGUARD_ADMIN_TOKEN to the service's admin token")
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    target = f"{url.rstrip('/')}/admin/{path}"
    request = urllib.request.Request(target, data=data, headers=headers, method=method)
    shown = target.split("?", 1)[0]

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, hdrs, newurl):
            fp.close()
            raise RuntimeError(f"{shown} redirected ({code}) to {newurl}; pass the service's own URL as --url")

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if missing_ok and exc.code == 404:  # `missing_ok`: a 404 answers b""
            return b""
        raise RuntimeError(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        elif isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        raise RuntimeError(f"cannot reach {shown}: {reason}") from None
    except TimeoutError:
        raise RuntimeError(f"cannot reach {shown}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise RuntimeError(f"cannot reach {shown}: {exc.__class__.__name__}: {exc}".rstrip(": ")) from None


def open_database(db: str | None, settings=None):
    """The store to read: `db` (a SQLite file or a postgresql:// URL), else the configured one
    (the fleet's PostgreSQL when fleet.database_url is set, else log.path)."""
    from pathlib import Path

    from core.config import load_settings
    from store.database import PostgresDatabase, SqliteDatabase, open_database as configured

    if db and db.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(db, replica="cli")
    if db or not (settings or load_settings()).fleet.enabled:
        path = Path(db) if db else (settings or load_settings()).log.path
        if not path.exists():
            raise FileNotFoundError(f"no prediction log at {path}")
        return SqliteDatabase(path)
    database = configured(settings or load_settings())
    database.migrates = False  # a reader never migrates, whatever fleet.migrate says
    return database


def open_log(db: str | None, settings=None):
    """A connection to the prediction log (see open_database). PostgreSQL: no DDL, its schema's
    version checked with a SELECT, so a SELECT-only role reads it too."""
    from store.database import StoreUnavailable

    database = open_database(db, settings)
    try:
        conn = database.connect()
    except database.errors as exc:
        raise RuntimeError(str(StoreUnavailable(f"cannot open {database.describe()}: {exc}"))) from None
    try:
        database.ready(conn)
    except BaseException:
        conn.close()
        raise
    return conn
