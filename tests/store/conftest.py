"""The store's fixtures: one database of each engine, for tests that must hold on both."""

import pytest

from store.database import PostgresDatabase, SqliteDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return SqliteDatabase(tmp_path / "p.sqlite")
    database = PostgresDatabase(request.getfixturevalue("pg_url"), replica="r1")
    database.migrate()  # `classguard db migrate`, as before a fleet starts
    return database
