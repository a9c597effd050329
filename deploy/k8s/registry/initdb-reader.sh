#!/bin/sh
# PostgreSQL's first start (/docker-entrypoint-initdb.d): the registry's read-only role,
# for the gateway and the engines. It may read every table the owner makes, now or later
# (the job creates them on its first import), and add rows to two: the tenants' usage
# (key_usage) and rollout evidence (rollout_samples), granted when the registry makes
# those tables, or here if they exist already.
#   SPARSEGATE_READER_PASSWORD  its password (required); SPARSEGATE_READER  its name
# Run by hand against an existing database: POSTGRES_USER=owner POSTGRES_DB=db PGHOST=...
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader="${SPARSEGATE_READER:-sparsegate_reader}" \
  -v password="${SPARSEGATE_READER_PASSWORD:?set SPARSEGATE_READER_PASSWORD}" \
  -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SELECT format('GRANT INSERT ON %I TO %I', t, :'reader')
  FROM unnest(ARRAY['key_usage', 'rollout_samples']) AS t
  WHERE to_regclass(t) IS NOT NULL \gexec
SQL
