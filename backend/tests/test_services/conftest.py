"""The vector-search tests get a database of their own.

Which path a search takes (exact scan or HNSW) and what the approximate HNSW path finds depend
on everything else in the documents table, so these tests must not share it with suites that
leave rows behind.
"""

from tests.own_database import database_fixtures

(
    database_set,
    migrated_db,
    settings,
    runtime_engine,
    runtime_sessions,
    owner_engine,
    admin_sessions,
    database,
) = database_fixtures()
