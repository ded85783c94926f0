"""`classguard db migrate`: create or upgrade the fleet database's schema, as its owner role."""

from __future__ import annotations

import argparse

HELP = "create or upgrade the fleet database's schema, as its owner role"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("migrate",))
    parser.add_argument("--database-url", help="the owner role's postgresql:// URL (default: fleet.database_url)")


def run(args: argparse.Namespace) -> int:
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
