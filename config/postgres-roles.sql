-- classguard's PostgreSQL roles: the grants the test suite creates its roles with
-- (tests/service/test_fleet_roles.py runs this file as it is).
--
-- Run once per database, as a superuser, connected to the database classguard uses (safe to
-- run again):
--     psql "postgresql://admin@HOST/classguard" -v ON_ERROR_STOP=1 -f config/postgres-roles.sql
-- then give each login role a password (or map it to your cloud's IAM login):
--     ALTER ROLE classguard_owner PASSWORD '...';    -- and classguard_service, classguard_oncall
--
--   classguard_owner    owns the tables; only `classguard db migrate` connects as it
--   classguard_service  every replica (fleet.database_url): reads and writes rows, no DDL
--   classguard_oncall   people and dashboards: SELECT only (`classguard log ...`, `replay --db`,
--                       `guardrails history --db`)
--
-- The service and on-call grants on the tables come from the default privileges below, so the
-- tables must be created by classguard_owner (`classguard db migrate` as that role). A database
-- whose tables another role created (a release before `classguard db migrate`): give them to
-- the owner first, e.g. REASSIGN OWNED BY old_role TO classguard_owner (as a superuser).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'classguard_owner') THEN
        CREATE ROLE classguard_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'classguard_service') THEN
        CREATE ROLE classguard_service LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'classguard_oncall') THEN
        CREATE ROLE classguard_oncall LOGIN;
    END IF;
    -- the database's name is whatever this runs in
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO classguard_owner, classguard_service, classguard_oncall',
                   current_database());
END
$$;

-- PostgreSQL before 15 lets every role create tables in `public`: only the owner may
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO classguard_owner;
GRANT USAGE ON SCHEMA public TO classguard_service, classguard_oncall;

-- what classguard_owner creates from now on (every table, sequence and function of the schema)
ALTER DEFAULT PRIVILEGES FOR ROLE classguard_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO classguard_service;
ALTER DEFAULT PRIVILEGES FOR ROLE classguard_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO classguard_service;   -- guardrail_chain's bigserial id
ALTER DEFAULT PRIVILEGES FOR ROLE classguard_owner IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO classguard_service;         -- classguard_add / classguard_sub (fleet windows)
ALTER DEFAULT PRIVILEGES FOR ROLE classguard_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO classguard_oncall;

-- and what the owner created before this file ran (a database migrated first)
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO classguard_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO classguard_service;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO classguard_service;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO classguard_oncall;
