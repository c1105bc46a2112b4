"""The vector-search tests get a database of their own.

Which path a search takes (exact scan or HNSW) and what the approximate HNSW path finds depend
on everything else in the documents table, so these tests must not share it with suites that
leave rows behind.
"""

from tests import own_database

migrated_db = own_database.migrated_db
settings = own_database.settings
runtime_engine = own_database.runtime_engine
runtime_sessions = own_database.runtime_sessions
owner_engine = own_database.owner_engine
admin_sessions = own_database.admin_sessions
database = own_database.database
