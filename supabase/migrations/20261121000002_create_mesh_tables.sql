-- 0002_create_mesh_tables.sql
-- The mesh model: tetrahedrons (mesh groups), their vertices (devices and the
-- users who own them), nodes (one row per device), the append-only heartbeat
-- log and guardian alerts. Row-level security is enabled here, with the table:
-- service_role bypasses it; an authenticated user sees the tetrahedrons they
-- are a vertex of and may add heartbeats to them; anon sees nothing.

-- private schema for helpers; PostgREST does not expose it ---------------
create schema if not exists flowmesh;
comment on schema flowmesh is
  'FlowMesh private helpers used by policies, triggers and RPC functions; not part of the API.';
revoke all on schema flowmesh from public;
grant usage on schema flowmesh to authenticated, service_role;

-- tables ---------------------------------------------------------------------
create table if not exists public.tetrahedrons (
  id                uuid primary key default gen_random_uuid(),
  name              text not null,
  last_heartbeat_at timestamptz,
  created_at        timestamptz not null default now(),
  constraint tetrahedrons_name_check
    check (char_length(name) between 1 and 128 and name !~ '[[:cntrl:]]')
);
comment on table public.tetrahedrons is
  'A mesh group (a household, a site, a camera cluster). last_heartbeat_at is maintained from mesh_heartbeats by a trigger.';
comment on column public.tetrahedrons.last_heartbeat_at is
  'Time of the newest heartbeat recorded for any member; null when none ever arrived.';
create unique index if not exists tetrahedrons_name_idx on public.tetrahedrons (name);

create table if not exists public.tetrahedron_vertices (
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  node_id        text not null,
  user_id        uuid,
  created_at     timestamptz not null default now(),
  primary key (tetrahedron_id, node_id),
  constraint tetrahedron_vertices_node_id_check
    check (char_length(node_id) between 1 and 128 and node_id !~ '[[:cntrl:]]')
);
comment on table public.tetrahedron_vertices is
  'Membership: which device (node_id) belongs to which tetrahedron, and the user (auth.uid()) who owns it. Row-level security is written against this table.';
create index if not exists tetrahedron_vertices_user_id_idx
  on public.tetrahedron_vertices (user_id);

create table if not exists public.nodes (
  tetrahedron_id    uuid not null references public.tetrahedrons (id) on delete cascade,
  node_id           text not null,
  role              text,
  status            text not null default 'online',
  health_score      double precision,
  predicted_risk    double precision,
  metrics           jsonb not null default '{}'::jsonb,
  state             jsonb not null default '{}'::jsonb,
  state_version     bigint not null default 0,
  last_seq          bigint,
  last_heartbeat_at timestamptz,
  created_at        timestamptz not null default now(),
  updated_at        timestamptz not null default now(),
  primary key (tetrahedron_id, node_id),
  constraint nodes_status_check check (status in ('online', 'degraded', 'offline')),
  constraint nodes_health_score_check check (health_score between 0 and 1),
  constraint nodes_predicted_risk_check check (predicted_risk between 0 and 1)
);
comment on table public.nodes is
  'One row per device: role, status, health score, predicted risk, latest metrics and versioned state. Updated from heartbeats by a trigger.';
comment on column public.nodes.last_seq is
  'Highest heartbeat sequence number received from this node through the batched RPC.';

-- mesh_heartbeats grows fastest: it is partitioned by day of created_at, and
-- the partitions live in the private schema flowmesh_partitions (readers and
-- writers use the parent, whose row-level security and trigger apply). A
-- unique key on a partitioned table must include the partition key, so
-- batches are idempotent by (tetrahedron, source, seq, created_at), with
-- created_at the sender's own time (see record_mesh_heartbeats).
create schema if not exists flowmesh_partitions;
comment on schema flowmesh_partitions is
  'Daily partitions of public.mesh_heartbeats; not part of the API (use the parent table).';
revoke all on schema flowmesh_partitions from public;

create table if not exists public.mesh_heartbeats (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  source         text not null,
  payload        jsonb not null default '{}'::jsonb,
  seq            bigint,
  created_at     timestamptz not null default now(),
  constraint mesh_heartbeats_pkey primary key (id, created_at),
  constraint mesh_heartbeats_source_check
    check (char_length(source) between 1 and 128 and source !~ '[[:cntrl:]]'),
  constraint mesh_heartbeats_payload_check check (jsonb_typeof(payload) = 'object')
) partition by range (created_at);
comment on table public.mesh_heartbeats is
  'Append-only log of heartbeats, partitioned by day of created_at (partitions in flowmesh_partitions, dropped past the retention). source is the sending node; seq its sequence number (null for single record_mesh_heartbeat calls); (tetrahedron, source, seq, created_at) is unique, so replayed batches insert nothing.';
create index if not exists mesh_heartbeats_tetrahedron_id_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, created_at desc);
create index if not exists mesh_heartbeats_created_at_idx
  on public.mesh_heartbeats (created_at);
create unique index if not exists mesh_heartbeats_tetrahedron_id_source_seq_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, source, seq, created_at);

create or replace function flowmesh.heartbeat_partition_name(day date) returns text
language sql immutable
set search_path = ''
as $$
  select 'mesh_heartbeats_' || pg_catalog.to_char(day, 'YYYYMMDD')
$$;
comment on function flowmesh.heartbeat_partition_name(date) is
  'Name of the mesh_heartbeats partition holding the UTC day.';

create or replace function flowmesh.ensure_heartbeat_partition(day date) returns boolean
language plpgsql security definer
set search_path = ''
as $$
declare
  v_name text := flowmesh.heartbeat_partition_name(day);
begin
  if pg_catalog.to_regclass('flowmesh_partitions.' || v_name) is not null then
    return false;
  end if;
  begin
    execute pg_catalog.format(
      'create table flowmesh_partitions.%I partition of public.mesh_heartbeats '
      'for values from (%L) to (%L)', v_name,
      (day::timestamp at time zone 'UTC'), ((day + 1)::timestamp at time zone 'UTC'));
  exception when duplicate_table then
    return false;  -- created concurrently
  end;
  return true;
end
$$;
comment on function flowmesh.ensure_heartbeat_partition(date) is
  'Create the partition for a UTC day unless it exists; true when it created it.';

revoke all on function flowmesh.heartbeat_partition_name(date), flowmesh.ensure_heartbeat_partition(date)
  from public, anon, authenticated;
grant execute on function flowmesh.heartbeat_partition_name(date), flowmesh.ensure_heartbeat_partition(date)
  to service_role;

-- today and a week ahead; the RPCs create others on demand, and
-- maintain_heartbeat_partitions (0010) keeps a week ahead and drops the old
do $$
begin
  perform flowmesh.ensure_heartbeat_partition((now() at time zone 'UTC')::date + d)
     from pg_catalog.generate_series(0, 7) as d;
end
$$;

create table if not exists public.guardian_alerts (
  id             bigint generated always as identity primary key,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  alert_type     text not null,
  node_id        text,
  severity       text not null default 'warning',
  message        text not null,
  details        jsonb not null default '{}'::jsonb,
  created_at     timestamptz not null default now(),
  resolved_at    timestamptz,
  constraint guardian_alerts_severity_check check (severity in ('info', 'warning', 'critical')),
  constraint guardian_alerts_resolved_at_check check (resolved_at is null or resolved_at >= created_at)
);
comment on table public.guardian_alerts is
  'Alerts such as mesh-degrading. At most one open alert (resolved_at is null) per tetrahedron, type and node; resolved automatically when the cause goes.';
create unique index if not exists guardian_alerts_tetrahedron_id_alert_type_node_id_idx
  on public.guardian_alerts (tetrahedron_id, alert_type, node_id) nulls not distinct
  where resolved_at is null;
create index if not exists guardian_alerts_tetrahedron_id_created_at_idx
  on public.guardian_alerts (tetrahedron_id, created_at desc);

-- membership helper used by every policy -----------------------------------
-- security definer so policies can read tetrahedron_vertices without
-- recursing into its own policy.
create or replace function flowmesh.member_tetrahedron_ids()
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
  select v.tetrahedron_id
    from public.tetrahedron_vertices v
   where v.user_id = (select auth.uid())
$$;
comment on function flowmesh.member_tetrahedron_ids() is
  'Ids of the tetrahedrons the current user (auth.uid()) is a vertex of; empty outside an authenticated request.';
revoke all on function flowmesh.member_tetrahedron_ids() from public, anon;
grant execute on function flowmesh.member_tetrahedron_ids() to authenticated, service_role;

-- row-level security -------------------------------------------------------
alter table public.tetrahedrons enable row level security;
alter table public.tetrahedron_vertices enable row level security;
alter table public.nodes enable row level security;
alter table public.mesh_heartbeats enable row level security;
alter table public.guardian_alerts enable row level security;

drop policy if exists tetrahedrons_select_authenticated on public.tetrahedrons;
create policy tetrahedrons_select_authenticated on public.tetrahedrons
  for select to authenticated
  using (id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists tetrahedron_vertices_select_authenticated on public.tetrahedron_vertices;
create policy tetrahedron_vertices_select_authenticated on public.tetrahedron_vertices
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists nodes_select_authenticated on public.nodes;
create policy nodes_select_authenticated on public.nodes
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists mesh_heartbeats_select_authenticated on public.mesh_heartbeats;
create policy mesh_heartbeats_select_authenticated on public.mesh_heartbeats
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists mesh_heartbeats_insert_authenticated on public.mesh_heartbeats;
-- no heartbeats from the future: one would hide the tetrahedron from the
-- staleness check until that time came
create policy mesh_heartbeats_insert_authenticated on public.mesh_heartbeats
  for insert to authenticated
  with check (tetrahedron_id in (select flowmesh.member_tetrahedron_ids())
              and created_at <= now());

drop policy if exists guardian_alerts_select_authenticated on public.guardian_alerts;
create policy guardian_alerts_select_authenticated on public.guardian_alerts
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

-- table privileges: policies decide rows, grants decide operations ---------
-- revoke from all three first so that re-running converges on the same ACL
revoke all on table public.tetrahedrons, public.tetrahedron_vertices, public.nodes,
  public.mesh_heartbeats, public.guardian_alerts from anon, authenticated, service_role;
grant select on table public.tetrahedrons, public.tetrahedron_vertices, public.nodes,
  public.guardian_alerts to authenticated;
grant select, insert on table public.mesh_heartbeats to authenticated;
grant all on table public.tetrahedrons, public.tetrahedron_vertices, public.nodes,
  public.mesh_heartbeats, public.guardian_alerts to service_role;
