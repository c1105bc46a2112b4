"""Create the runtime and provisioning roles and the shared `set_updated_at` trigger function.

`app_runtime` is what every request transaction runs as: no superuser, no BYPASSRLS, owns
nothing, can create nothing. `app_admin` (BYPASSRLS) is the provisioning role for the admin
CLI. Both are granted to the migrating login so it can switch to them. Roles are cluster-wide:
an existing role is kept (and checked), not recreated.

Revision ID: 5b0f3c1d2e4a
Revises: 1ef269d5fac7
Create Date: 2025-10-16 13:55:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b0f3c1d2e4a"
down_revision: str | None = "1ef269d5fac7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE
            role_name text;
            can_set boolean;
            grant_sql text;
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_runtime') THEN
                CREATE ROLE app_runtime NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                    NOINHERIT NOREPLICATION;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_admin') THEN
                CREATE ROLE app_admin NOLOGIN NOSUPERUSER BYPASSRLS NOCREATEDB NOCREATEROLE
                    NOINHERIT NOREPLICATION;
            END IF;
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_runtime'
                       AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb)) THEN
                RAISE EXCEPTION 'role app_runtime exists with superuser, BYPASSRLS, CREATEROLE '
                    'or CREATEDB: refusing to use it as the runtime role';
            END IF;
            -- The migrating login must be able to SET ROLE to both. From PostgreSQL 16 on, a
            -- CREATEROLE login that creates a role is made a member of it automatically, but
            -- without the SET option, so membership alone is not enough: check for SET.
            FOREACH role_name IN ARRAY ARRAY['app_runtime', 'app_admin'] LOOP
                IF current_setting('server_version_num')::int >= 160000 THEN
                    can_set := pg_has_role(current_user, role_name, 'SET');
                    grant_sql := format('GRANT %I TO %I WITH INHERIT FALSE, SET TRUE',
                                        role_name, current_user);
                ELSE
                    can_set := pg_has_role(current_user, role_name, 'MEMBER');
                    grant_sql := format('GRANT %I TO %I', role_name, current_user);
                END IF;
                IF NOT can_set THEN
                    BEGIN
                        EXECUTE grant_sql;
                    EXCEPTION WHEN insufficient_privilege THEN
                        RAISE EXCEPTION 'login % cannot SET ROLE % and may not grant it',
                            current_user, role_name
                            USING HINT = format(
                                'as a superuser run: GRANT %I TO %I WITH ADMIN OPTION',
                                role_name, current_user);
                    END;
                END IF;
            END LOOP;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION set_updated_at() RETURNS trigger
            LANGUAGE plpgsql
            SET search_path = pg_catalog, pg_temp
        AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION set_updated_at() FROM PUBLIC")
    # The runtime role creates nothing: no objects in public, no temporary tables.
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO app_runtime, app_admin',
                           current_database());
        END $$
        """
    )
    op.execute("GRANT USAGE ON SCHEMA public TO app_runtime, app_admin")


def downgrade() -> None:
    op.execute("REVOKE USAGE ON SCHEMA public FROM app_runtime, app_admin")
    op.execute(
        """
        DO $$
        BEGIN
            EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM app_runtime, app_admin',
                           current_database());
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
        END $$
        """
    )
    op.execute("DROP FUNCTION set_updated_at()")
    # Another database on the same server may still use the roles; keep them if so.
    op.execute(
        """
        DO $$
        DECLARE
            role_name text;
        BEGIN
            FOREACH role_name IN ARRAY ARRAY['app_runtime', 'app_admin'] LOOP
                BEGIN
                    EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
                EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
                    RAISE NOTICE 'role % kept: %', role_name, SQLERRM;
                END;
            END LOOP;
        END $$
        """
    )
