"""`classguard`: the command line.

    classguard train [--force]            train the incident's two models into the store
    classguard import-model NAME ...      bring your own torch classifier (see --help)
    classguard profile TAG                print a stored model's reference profile as JSON
    classguard drift-report [--url URL]   fetch the Evidently drift report of recent traffic
    classguard guardrails show            the running service's active guardrail chain
    classguard guardrails apply PROFILE [--file CHAIN.yaml]   swap the chain on every worker
    classguard log list|show ID|summary|confusion   look up the prediction log (reads the SQLite file)
    classguard replay PROFILE [--file CHAIN.yaml] [--since 1h]   what a chain would have answered
    classguard regions [--since 15m] [--url URL]   the embedding's regions, ranked by excess share x error
    classguard db migrate [--database-url URL]   create or upgrade the fleet database's schema (owner role)
"""

from __future__ import annotations

import argparse
import json
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train baseline and retrained models")
    train.add_argument("--force", action="store_true")
    train.add_argument("--epochs", type=count(1, 10_000), default=40)

    from ops import import_model as byom

    imp = commands.add_parser("import-model", help="import your own classifier and profile it",
                              description=byom.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    byom.add_arguments(imp)

    profile = commands.add_parser("profile", help="print a stored model's reference profile")
    profile.add_argument("tag")

    report = commands.add_parser("drift-report", help="Evidently report of recent traffic vs the reference")
    report.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    report.add_argument("--format", choices=("html", "json"), default="json")
    report.add_argument("--window-seconds", type=float, default=300.0)
    report.add_argument("--model", help="model name (default: the primary)")
    report.add_argument("--output", "-o", help="file to write (default: stdout)")

    guard = commands.add_parser("guardrails", help="show or swap the running service's guardrail chain")
    guard.add_argument("action", choices=("show", "apply", "history"))
    guard.add_argument("profile", nargs="?", help="profile name (apply)")
    guard.add_argument("--file", help="YAML list of guardrails to apply under PROFILE's name")
    guard.add_argument("--url", default="http://127.0.0.1:3000")
    guard.add_argument("--db", help="history: a postgresql:// URL (default: the fleet's, else the audit log file)")
    guard.add_argument("--limit", type=count(1, 100_000), default=20, help="history: the newest N changes")

    logs = commands.add_parser("log", help="look up logged predictions (the SQLite file, or the fleet's PostgreSQL)")
    logs.add_argument("action", choices=("list", "show", "summary", "confusion"))
    logs.add_argument("request_id", nargs="?", help="with show: a request id, or a correlation id naming one answer")
    logs.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    logs.add_argument("--since", help="15m, 2h, 1d or Unix seconds")
    logs.add_argument("--until")
    logs.add_argument("--subgroup")
    logs.add_argument("--region", help="the primary's region of the image: r07, novel")
    logs.add_argument("--flag", help="e.g. low_confidence or known_confusion:6->0")
    logs.add_argument("--action-taken", dest="guardrail_action", help="a guardrail action, e.g. abstain")
    logs.add_argument("--model")
    logs.add_argument("--correlation-id", help="the client's X-Request-ID")
    logs.add_argument("--flagged", action="store_true", help="only flagged predictions")
    logs.add_argument("--limit", type=count(1, 100_000), default=50, help="the newest N rows (list)")
    logs.add_argument("--format", choices=("table", "json", "jsonl", "csv"), default="table")

    rep = commands.add_parser("replay", help="re-apply a guardrail profile to logged predictions")
    rep.add_argument("profile", help="a profile of the guardrails file, or the name for --file")
    rep.add_argument("--file", help="YAML list of guardrails to replay instead of the named profile")
    rep.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    rep.add_argument("--since", default="1h", help="15m, 2h, 1d or Unix seconds")
    rep.add_argument("--until")
    rep.add_argument("--subgroup")
    rep.add_argument("--region", help="only rows the primary placed in this region (r07, novel)")
    rep.add_argument("--format", choices=("table", "json"), default="table")

    reg = commands.add_parser("regions", help="the primary's embedding regions in recent traffic, worst first")
    reg.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    reg.add_argument("--since", default="15m", help="15m, 2h, 1d or Unix seconds")
    reg.add_argument("--until")
    reg.add_argument("--top", type=count(1, 65), default=10, help="the N highest-ranked regions")
    reg.add_argument("--exemplars", type=count(0, 50), default=5, help="newest request ids shown per region")
    reg.add_argument("--format", choices=("table", "json"), default="table")

    dbc = commands.add_parser("db", help="create or upgrade the fleet database's schema, as its owner role")
    dbc.add_argument("action", choices=("migrate",))
    dbc.add_argument("--database-url", help="the owner role's postgresql:// URL (default: fleet.database_url)")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from training.train import main as train_main

            return train_main([*(["--force"] if args.force else []), "--epochs", str(args.epochs)])
        if args.command == "import-model":
            return byom.run(args)
        if args.command == "profile":
            from runtime.models import find_stored
            from store.model_store import PROFILE_KEY

            print(json.dumps(find_stored(args.tag).info.metadata[PROFILE_KEY], indent=2))
            return 0
        if args.command == "drift-report":
            return drift_report(args)
        if args.command == "guardrails":
            return guardrails(args)
        if args.command == "log":
            return log_lookup(args)
        if args.command == "replay":
            return replay(args)
        if args.command == "regions":
            return regions(args)
        if args.command == "db":
            return db_migrate(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"classguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_store_error(exc):
            raise
        # a refused grant or a broken query: the database's own first line, not a traceback
        print(f"classguard {args.command}: error: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    return 1


def is_store_error(exc: BaseException) -> bool:
    """An error of SQLite or PostgreSQL's driver (the latter only when it is installed)."""
    import sqlite3

    try:
        import psycopg

        return isinstance(exc, (sqlite3.Error, psycopg.Error))
    except ImportError:
        return isinstance(exc, sqlite3.Error)


def db_migrate(args: argparse.Namespace) -> int:
    """Bring the fleet database's schema to this version, once; replicas only check its version.
    Run it as the owner role before a rollout (README, "Database roles")."""
    from core.config import load_settings
    from store.database import PostgresDatabase

    configured = None if args.database_url else load_settings().fleet.database_url
    url = args.database_url or (configured.get_secret_value() if configured else None)
    if url is None:
        raise ValueError("no PostgreSQL to migrate: pass --database-url or set CLASSGUARD_FLEET__DATABASE_URL "
                         "(the SQLite log of a single host creates its own schema)")
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("--database-url must be a postgresql:// URL (not shown: it may hold a password)")
    database = PostgresDatabase(url, replica="migrate")
    try:
        print(database.migrate())
    except database.errors as exc:
        if getattr(exc, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        raise RuntimeError(f"{str(exc).splitlines()[0]}: run it as the database's owner role "
                           "(config/postgres-roles.sql)") from None
    return 0


def admin_call(url: str, path: str, *, body: dict | None = None, timeout: float = 120) -> bytes:
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
    request = urllib.request.Request(target, data=data, headers=headers)
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


def guardrails(args: argparse.Namespace) -> int:
    if args.action == "history":
        return guardrail_history(args)
    if args.action == "show":
        print(admin_call(args.url, "guardrails").decode())
        return 0
    if not args.profile:
        raise ValueError("apply needs a PROFILE name")
    body: dict = {"profile": args.profile}
    if args.file:
        import yaml

        with open(args.file) as f:
            body["chain"] = yaml.safe_load(f)
    print(admin_call(args.url, "guardrails", body=body).decode())
    return 0


def replay(args: argparse.Namespace) -> int:
    import yaml

    from core.config import load_settings
    from runtime.active_chain import chain_context
    from runtime.chain_config import compile_chain, load_profiles
    from runtime.models import find_stored, stored_regions
    from store import prediction_log
    from store import replay as replaying
    from store.model_store import PROFILE_KEY, split_tag

    settings = load_settings()
    conn = open_log(args.db, settings)
    if args.file:
        with open(args.file) as f:
            specs = yaml.safe_load(f)
    else:
        specs = load_profiles(settings.guardrails.profiles_path).chain(args.profile)
    labels_of = {split_tag(tag)[0]: find_stored(tag).info.metadata[PROFILE_KEY]["labels"]
                 for tag in settings.models.tags()}
    chain = compile_chain(specs, args.profile,
                          chain_context(settings, {label for labels in labels_of.values() for label in labels},
                                        stored_regions(find_stored(settings.models.tags()[0]))))
    report = replaying.replay(conn, chain, labels_of, since=prediction_log.parse_since(args.since),
                              until=prediction_log.parse_since(args.until), subgroup=args.subgroup,
                              region=args.region)
    print(json.dumps(report, indent=2) if args.format == "json" else replaying.render(report))
    return 0


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


def guardrail_history(args: argparse.Namespace) -> int:
    """The newest chain changes: the fleet's rows in PostgreSQL, or the single host's audit log."""
    from core.config import load_settings
    from store.chain_store import FleetChainStore

    settings = load_settings()
    if args.db or settings.fleet.enabled:
        database = open_database(args.db, settings)
        rows = FleetChainStore(database, "cli").history(args.limit)
    else:
        path = settings.guardrails.audit_log
        if not path.exists():
            raise FileNotFoundError(f"no guardrail audit log at {path}")
        rows = [json.loads(line) for line in path.read_text().splitlines()[-args.limit:]][::-1]
    for row in rows:
        print(json.dumps({k: row.get(k) for k in ("id", "ts", "time", "source", "replica", "pid", "profile", "hash",
                                                  "previous_hash") if k in row}, default=str), flush=True)
    if not rows:
        print("no guardrail changes recorded")
    return 0


def log_lookup(args: argparse.Namespace) -> int:
    from store import prediction_log

    conn = open_log(args.db)
    if args.action == "show":
        if not args.request_id:
            raise ValueError("show needs a REQUEST_ID")
        found = prediction_log.find(conn, args.request_id)
        if not found:
            raise ValueError(f"no logged prediction has request id or correlation id {args.request_id!r}")
        if len(found) > 1:
            raise ValueError(f"correlation id {args.request_id!r} names several answers; show one of: "
                             f"{', '.join(r['request_id'] for r in found)}")
        record = found[0]
        # one field a line, values compact: the trace reads at a glance and is still valid JSON
        print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}")
        return 0
    if args.action == "confusion":
        from store import feedback

        counts = feedback.confusion(conn, subgroup=args.subgroup, model=args.model,
                                    since=prediction_log.parse_since(args.since),
                                    until=prediction_log.parse_since(args.until), region=args.region)
        truths = sorted({t for t, _ in counts})
        emitted = sorted({e for _, e in counts})
        print("true \\ answered " + " ".join(f"{e:>9}" for e in emitted))
        for t in truths:
            print(f"{t:<16} " + " ".join(f"{counts.get((t, e), 0):>9}" for e in emitted))
        total = sum(counts.values())
        right = sum(n for (t, e), n in counts.items() if t == e)
        print(f"\n{total} answers with feedback, {right} right ({right / max(total, 1):.1%})")
        return 0
    if args.action == "summary":
        since = prediction_log.parse_since(args.since or "1h")
        for row in prediction_log.summary(conn, since):
            print(f"{row['subgroup']:<20} {row['flag']:<28} {row['count']:>8}")
        return 0
    records = prediction_log.query(
        conn, since=prediction_log.parse_since(args.since), until=prediction_log.parse_since(args.until),
        subgroup=args.subgroup, flag=args.flag, action=args.guardrail_action, model=args.model,
        correlation_id=args.correlation_id, flagged_only=args.flagged, limit=args.limit, region=args.region)
    if args.format == "json":
        print(json.dumps(records, indent=2))
    elif args.format in ("jsonl", "csv"):
        sys.stdout.write(prediction_log.export(records, args.format))
    else:
        import time as _time

        for r in records:
            when = _time.strftime("%H:%M:%S", _time.localtime(r["ts"]))
            actions = ",".join(d["action"] for d in r["guardrails"]) or "-"
            print(f"{when} {r['request_id']:<36} {r['subgroup']:<18} {r['region'] or '-':<6} {r['model']:<22} "
                  f"{str(r['label']):<5} {r['confidence']:.3f} {','.join(r['flags']) or '-':<28} {actions}")
    return 0


def regions(args: argparse.Namespace) -> int:
    """GET /admin/regions, as a table or JSON."""
    import urllib.parse

    from store import region_report

    query = {"since": args.since, "top": args.top, "exemplars": args.exemplars,
             **({"until": args.until} if args.until else {})}
    body = admin_call(args.url, f"regions?{urllib.parse.urlencode(query)}")
    print(body.decode() if args.format == "json" else region_report.render(json.loads(body)))
    return 0


def drift_report(args: argparse.Namespace) -> int:
    """GET /admin/drift-report."""
    import urllib.parse

    query = {"format": args.format, "window_seconds": args.window_seconds, **({"model": args.model} if args.model else {})}
    body = admin_call(args.url, f"drift-report?{urllib.parse.urlencode(query)}")
    if args.output:
        with open(args.output, "wb") as f:
            f.write(body)
    else:
        sys.stdout.buffer.write(body + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
