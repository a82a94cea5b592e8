-- Named queries used by the Python code, loaded by name (flowmesh.queries).
-- Each block starts with "-- name: <name>" and may describe itself below it.
-- The rules live in SQL functions; these only call them or read results.

-- name: register_node
-- Make a node a vertex of its tetrahedron (created when missing); returns its id.
select public.register_node(%(tetrahedron)s, %(node_id)s, %(role)s) as tetrahedron_id;

-- name: record_heartbeats
-- Ship one outbox batch; idempotent by (src, seq).
select received, inserted, duplicates
  from public.record_mesh_heartbeats(%(tetrahedron_id)s, %(batch)s);

-- name: record_events
-- Ship mesh events (membership changes, alerts) from the outbox; idempotent by (observer, seq).
select received, inserted, duplicates
  from public.record_mesh_events(%(tetrahedron_id)s, %(batch)s);

-- name: register_hashes
-- Ship hash registry entries added on a device (MeshNode.add_hash) from its outbox;
-- idempotent by (hash, version): the same or a lower version is a duplicate.
select received, inserted, duplicates
  from public.register_hashes(%(tetrahedron_id)s, %(batch)s);

-- name: check_all
-- Open/resolve mesh-degrading alerts for every tetrahedron; returns those opened.
select id, tetrahedron_id, alert_type, message, created_at
  from public.check_mesh_heartbeats_and_alert(%(threshold_minutes)s);

-- name: check_one
-- The same check for one tetrahedron.
select id, tetrahedron_id, alert_type, message, created_at
  from public.check_mesh_heartbeats_and_alert(%(threshold_minutes)s, %(tetrahedron_id)s);

-- name: stale_tetrahedrons
-- Tetrahedrons silent for longer than the threshold, optionally just one.
select tetrahedron_id, name, last_heartbeat_at,
       extract(epoch from silent_for)::double precision as silent_for_s
  from public.stale_tetrahedrons(%(threshold_minutes)s)
 where %(tetrahedron_id)s::uuid is null or tetrahedron_id = %(tetrahedron_id)s::uuid;

-- name: open_alerts
-- Open guardian alerts, newest first, optionally for one tetrahedron.
select a.id, a.tetrahedron_id, t.name as tetrahedron, a.alert_type, a.node_id,
       a.severity, a.message, a.created_at
  from public.guardian_alerts a
  join public.tetrahedrons t on t.id = a.tetrahedron_id
 where a.resolved_at is null
   and (%(tetrahedron_id)s::uuid is null or a.tetrahedron_id = %(tetrahedron_id)s::uuid)
 order by a.created_at desc, a.id desc;

-- name: tetrahedron_count
select count(*) as n from public.tetrahedrons;

-- name: list_tetrahedrons
-- Tetrahedrons with their member count and last heartbeat.
select t.id, t.name, t.last_heartbeat_at,
       (select count(*) from public.tetrahedron_vertices v where v.tetrahedron_id = t.id) as vertices,
       (select count(*) from public.guardian_alerts a
         where a.tetrahedron_id = t.id and a.resolved_at is null) as open_alerts
  from public.tetrahedrons t
 order by t.name;

-- name: list_nodes
-- Nodes with their status as of now and since when (public.nodes), and what
-- the peer mesh last said of them (its status, and the transport a member last
-- reached it over), optionally of one tetrahedron (by name).
select t.name as tetrahedron, n.node_id, n.role, n.status, n.status_since, n.health_score,
       n.mesh_status, n.mesh_transport, n.last_heartbeat_at, n.last_seq, n.metrics
  from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 where %(tetrahedron)s::text is null or t.name = %(tetrahedron)s::text
 order by t.name, n.node_id;

-- name: add_vertex
-- Link a device (and optionally its owning user) to a tetrahedron by name.
insert into public.tetrahedron_vertices (tetrahedron_id, node_id, user_id)
select t.id, %(node_id)s, %(user_id)s::uuid from public.tetrahedrons t where t.name = %(tetrahedron)s
on conflict (tetrahedron_id, node_id) do update set user_id = excluded.user_id
returning tetrahedron_id;

-- name: server_version
select current_setting('server_version_num')::int as version_num,
       current_setting('server_version') as version;

-- name: prediction_pass
-- Log offline periods not yet logged, score every node's failure risk, open/resolve alerts.
select nodes_scored, alerts_opened, alerts_resolved, marked_offline
  from public.run_prediction_pass(%(window_size)s);

-- name: nodes_by_risk
-- Nodes with a predicted risk, riskiest first, optionally of one tetrahedron.
select t.name as tetrahedron, n.node_id, n.status, n.health_score, n.predicted_risk,
       n.predicted_at
  from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 where n.predicted_risk is not null
   and (%(tetrahedron)s::text is null or t.name = %(tetrahedron)s::text)
 order by n.predicted_risk desc, t.name, n.node_id
 limit %(limit)s;

-- name: mesh_summary
-- Nodes online, degraded and offline as of now, average health and last
-- prediction per tetrahedron, optionally one.
select name as tetrahedron, online, degraded, offline, average_health, last_prediction,
       highest_risk, last_heartbeat_at
  from public.mesh_summary
 where %(tetrahedron)s::text is null or name = %(tetrahedron)s::text
 order by name;

-- name: scheduled_checks
-- One cycle of the scheduled work (pg_cron's flowmesh-checks job runs this very text):
-- the heartbeat check, the prediction pass, expired guardian decisions.
select * from public.run_scheduled_checks(threshold_minutes => %(threshold_minutes)s, window_size => %(window_size)s);

-- name: cron_version
-- The installed pg_cron version, or nothing.
select extversion from pg_extension where extname = 'pg_cron';

-- name: cron_available
-- Whether pg_cron could be created here (preloaded, and this is its database).
select exists (select 1 from pg_available_extensions where name = 'pg_cron') as available,
       coalesce(current_setting('cron.database_name', true), '') as cron_database,
       current_database() as database,
       position('pg_cron' in current_setting('shared_preload_libraries')) > 0 as preloaded;

-- name: create_pg_cron
create extension if not exists pg_cron;

-- name: cron_schedule
-- Create or replace a named job (pg_cron replaces a job of the same name).
select cron.schedule(%(name)s, %(schedule)s, %(command)s) as jobid;

-- name: cron_jobs
-- FlowMesh's jobs, with their last run.
select j.jobname, j.schedule, j.command, j.active,
       (select max(d.end_time) from cron.job_run_details d where d.jobid = j.jobid) as last_run,
       (select d.status from cron.job_run_details d where d.jobid = j.jobid
         order by d.end_time desc nulls last limit 1) as last_status
  from cron.job j
 where j.jobname like 'flowmesh-%%'
 order by j.jobname;

-- name: cron_unschedule
select cron.unschedule(%(name)s) as removed;

-- name: metrics_heartbeats
-- Heartbeats received in the last minute, per tetrahedron (the exporter).
select t.name, count(h.id) as heartbeats
  from public.tetrahedrons t
  left join public.mesh_heartbeats h
    on h.tetrahedron_id = t.id and h.created_at >= now() - interval '1 minute'
 group by t.name;

-- name: metrics_nodes_by_status
-- Nodes per tetrahedron and status as of now (the exporter).
select tetrahedron, status, nodes from public.nodes_by_status;

-- name: metrics_open_alerts
select alert_type, severity, count(*) as alerts
  from public.guardian_alerts where resolved_at is null group by 1, 2;

-- name: metrics_node_health
select t.name as tetrahedron, n.node_id, n.health_score, n.predicted_risk
  from public.nodes n join public.tetrahedrons t on t.id = n.tetrahedron_id;

-- name: metrics_last_check
select duration_ms, started_at, alerts_opened
  from public.check_runs where tetrahedron_id is null
 order by started_at desc limit 1;

-- name: maintain_partitions
-- Create heartbeat partitions ahead, drop those past the retention (pg_cron's
-- flowmesh-retention job runs this very text, daily).
select created, dropped, oldest, newest
  from public.maintain_heartbeat_partitions(make_interval(days => %(retention_days)s));

-- The demo (flowmesh_edge/demo.py) ------------------------------------------

-- name: delete_tetrahedron
-- Remove a tetrahedron and, by cascade, everything of it (the demo's, before a rerun).
delete from public.tetrahedrons where name = %(tetrahedron)s returning id;

-- name: tetrahedron_members
-- Every node a tetrahedron has, as a vertex or as a node row (the demo removes
-- only a tetrahedron made of its own devices).
select v.node_id from public.tetrahedron_vertices v
  join public.tetrahedrons t on t.id = v.tetrahedron_id
 where t.name = %(tetrahedron)s
union
select n.node_id from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 where t.name = %(tetrahedron)s;

-- name: set_node_timeout
-- How long a node of this tetrahedron may be silent before it is offline; its
-- nodes' offline_at follow by trigger.
update public.tetrahedrons set node_timeout_seconds = %(seconds)s where name = %(tetrahedron)s;

-- name: tetrahedron_nodes
-- One tetrahedron's nodes as of now: status and since when, metrics and those
-- past their threshold, what the mesh last said of each, predicted risk.
select node_id, role, status, status_since, health_score, predicted_risk, metrics,
       public.health_problems(metrics) as problems,
       mesh_status, mesh_reported_by, last_heartbeat_at
  from public.nodes
 where tetrahedron_id = %(tetrahedron_id)s::uuid
 order by node_id;

-- name: mesh_links_count
-- How many (member, peer) pairs of a tetrahedron hear each other now (public.mesh_links,
-- the dashboard's mesh map): n members all hearing each other make n * (n - 1).
select count(*) as links from public.mesh_links where tetrahedron_id = %(tetrahedron_id)s::uuid;

-- Connections, the embedded server and migrations ---------------------------

-- name: server_clock
-- The database's clock, Unix seconds (the agent measures its own clock's offset).
select extract(epoch from clock_timestamp())::float8 as now;

-- name: database_exists
select 1 from pg_database where datname = %(name)s;

-- name: create_database
-- {database} is an identifier, composed with psycopg.sql.
create database {database};

-- name: migration_table
-- Whether Alembic's version table exists (flowmesh.alembic_version).
select to_regclass('flowmesh.alembic_version') is not null as present;

-- name: migration_revision
select version_num from flowmesh.alembic_version;

-- name: migration_lock
-- Concurrent migrators (agents starting at once) take turns: tried, and tried
-- again for a bounded time (alembic/env.py), since any role may take an
-- advisory lock and a session holding it must not stall a migration forever.
select pg_try_advisory_lock(%(key)s);

-- name: migration_lock_holders
-- Who holds the migration lock (an advisory lock's key is split in two 32-bit halves).
select a.pid, a.usename, a.application_name
  from pg_catalog.pg_locks l
  join pg_catalog.pg_stat_activity a on a.pid = l.pid
 where l.locktype = 'advisory' and l.granted
   and l.classid::bigint = (%(key)s::bigint >> 32) and l.objid::bigint = (%(key)s::bigint & 4294967295);

-- name: migration_unlock
select pg_advisory_unlock(%(key)s);

-- name: migration_schema
create schema if not exists flowmesh;

-- name: device_credential_of
-- The device role of a vertex, if it has one.
select c.role_name from flowmesh.device_credentials c
 where c.tetrahedron_id = %(tetrahedron_id)s::uuid and c.node_id = %(node_id)s;

-- name: create_device_role
-- {role} is an identifier, {connection_limit} and {verifier} literals, composed
-- with psycopg.sql. The password arrives only as its SCRAM-SHA-256 verifier.
create role {role} login inherit nosuperuser nocreatedb nocreaterole noreplication nobypassrls
  connection limit {connection_limit} password {verifier} in role flowmesh_device;

-- name: limit_device_statement_time
-- {role} an identifier, {timeout} a literal ('10000ms'): bounds every statement
-- of the device's sessions on the server, the agent's --db-timeout by default.
alter role {role} set statement_timeout = {timeout};

-- name: add_device_credential
insert into flowmesh.device_credentials (role_name, tetrahedron_id, node_id)
values (%(role)s, %(tetrahedron_id)s::uuid, %(node_id)s);

-- name: device_credential_by_name
-- A device's role and its oid (null when the role was dropped by hand), by
-- tetrahedron name and node id.
select c.role_name, r.oid as role_oid
  from flowmesh.device_credentials c
  join public.tetrahedrons t on t.id = c.tetrahedron_id
  left join pg_catalog.pg_roles r on r.rolname = c.role_name
 where t.name = %(tetrahedron)s and c.node_id = %(node_id)s;

-- name: delete_device_credential
delete from flowmesh.device_credentials where role_name = %(role)s;

-- name: disable_device_role
-- {role} is an identifier, composed with psycopg.sql. First step of a revoke:
-- no new session, whatever happens next.
alter role {role} nologin;

-- name: drop_device_role
-- {role} is an identifier, composed with psycopg.sql.
drop role if exists {role};

-- name: end_device_sessions
-- End the sessions of a dropped device role (by oid: its name is gone).
select pg_terminate_backend(a.pid) from pg_stat_activity a where a.usesysid = %(role_oid)s::oid;

-- name: list_devices
-- Device credentials with their vertex, the node's last heartbeat (public.nodes),
-- when the credential last wrote, and its open sessions; optionally of one
-- tetrahedron (by name).
select t.name as tetrahedron, c.node_id, c.role_name as role, c.created_at,
       n.last_heartbeat_at, c.last_used_at,
       (select count(*) from pg_stat_activity a where a.usename = c.role_name)::int as sessions
  from flowmesh.device_credentials c
  join public.tetrahedrons t on t.id = c.tetrahedron_id
  left join public.nodes n on n.tetrahedron_id = c.tetrahedron_id and n.node_id = c.node_id
 where %(tetrahedron)s::text is null or t.name = %(tetrahedron)s::text
 order by t.name, c.node_id;

-- The connection pooler (flowmesh/pooler.py) ---------------------------------
-- A deployment piece, run by `flowmesh db up --pooler` as the superuser, not a
-- migration: PgBouncer's password look-up must read pg_authid, which only a
-- superuser's definer function can, and every database the pooler serves needs it
-- (PgBouncer 1.18 runs auth_query in the database the client asked for).

-- name: role_exists
select 1 from pg_catalog.pg_roles where rolname = %(role)s;

-- name: pooler_create_role
-- {role} is an identifier, composed with psycopg.sql.
create role {role} login noinherit;

-- name: pooler_set_password
-- {role} an identifier, {verifier} a SCRAM-SHA-256 verifier computed by the client,
-- so no password in clear ever reaches the server (or its log).
alter role {role} login noinherit password {verifier};

-- name: pooler_reserve_slot
-- PgBouncer's look-ups still get a connection when devices hold all the others
-- (with inherit: the pooler's role is noinherit, so the grant must say it).
grant pg_use_reserved_connections to {role} with inherit true;

-- name: pooler_schema
create schema if not exists flowmesh_pooler;

-- name: pooler_schema_grants
revoke all on schema flowmesh_pooler from public;

-- name: pooler_schema_usage
grant usage on schema flowmesh_pooler to {role};

-- name: pooler_lookup
-- PgBouncer's auth_query: the SCRAM verifier of a login role, for PgBouncer to
-- check a client's password against without a copy of its own. Superusers and
-- expired roles are never returned: they cannot log in through the pooler by password.
create or replace function flowmesh_pooler.lookup(user_name text)
returns table (usename name, passwd text)
language sql stable security definer set search_path = ''
as $$
  select a.rolname, a.rolpassword
    from pg_catalog.pg_authid a
   where a.rolname = user_name
     and a.rolcanlogin
     and not a.rolsuper
     and (a.rolvaliduntil is null or a.rolvaliduntil > pg_catalog.now())
$$;

-- name: pooler_lookup_comment
comment on function flowmesh_pooler.lookup(text) is
  'PgBouncer''s auth_query (flowmesh/pooler.py): the password verifier of a non-superuser login role. '
  'Executable only by the pooler''s own role.';

-- name: pooler_lookup_revoke
revoke all on function flowmesh_pooler.lookup(text) from public;

-- name: pooler_lookup_grant
grant execute on function flowmesh_pooler.lookup(text) to {role};

-- name: reserved_connections
-- The connection slots kept for roles with pg_use_reserved_connections (PostgreSQL 16+),
-- null before 16; and the slots kept for superusers.
select (select setting::int from pg_catalog.pg_settings where name = 'reserved_connections') as reserved,
       current_setting('superuser_reserved_connections')::int as superuser_reserved;

-- name: set_reserved_connections
-- {count} a literal composed with psycopg.sql; takes effect at the next restart.
alter system set reserved_connections = {count};
