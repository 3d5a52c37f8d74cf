#!/bin/sh
# The read-only role Grafana's PostgreSQL datasource logs in as
# (deploy/grafana/provisioning/datasources/descent.yml): whoever may use Grafana can send it any
# SQL (/api/ds/query), so it gets SELECT and nothing else, never the owner's rights.
#
# Compose mounts this folder at /docker-entrypoint-initdb.d: the postgres image runs it once, when
# it creates the database (an empty volume), before `migrate` makes the tables. So SELECT comes
# from default privileges on what the owner (POSTGRES_USER, who runs the migrations) creates in
# schema public, and from a grant on the tables that already exist. Safe to run again: it
# (re)sets the role's password and grants. For a volume made before this script existed, or
# after changing GRAFANA_DB_PASSWORD:
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-grafana-reader.sh
#
# Environment: POSTGRES_USER (the owner), POSTGRES_DB, GRAFANA_DB_PASSWORD, GRAFANA_DB_USER
# (default grafana_reader); psql's PG* variables say where the server is (default: the socket).
# psql 15+ (\getenv): the password never appears on a command line.
set -e
: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}" "${GRAFANA_DB_PASSWORD:?set GRAFANA_DB_PASSWORD in .env (see .env.example)}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=reader="${GRAFANA_DB_USER:-grafana_reader}" --set=owner="$POSTGRES_USER" --set=database="$POSTGRES_DB" <<'SQL'
\getenv password GRAFANA_DB_PASSWORD
SELECT format('CREATE ROLE %I', :'reader') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT 10 PASSWORD :'password';
-- Belt and braces: its transactions are read-only, and a runaway query ends (Grafana's panels
-- take milliseconds to a second or so).
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';

REVOKE CREATE ON SCHEMA public FROM PUBLIC;  -- PostgreSQL 15+ grants none; older ones did
GRANT CONNECT ON DATABASE :"database" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
