-- 0003_create_mesh_tables.sql
-- The mesh groups and who belongs to them: tetrahedrons (a household, a site,
-- a camera cluster), their vertices (devices, and the users who own them) and
-- guardian alerts, with the membership helper every row-level security policy
-- is written against. Row-level security is enabled here, with the tables:
-- service_role bypasses it; an authenticated user sees the tetrahedrons they
-- are a vertex of, and writes as the vertices they own; anon sees nothing.
-- Nodes, the heartbeat log and the other tables are created in the files of
-- their concerns.

-- tables ---------------------------------------------------------------------
create table if not exists public.tetrahedrons (
  id                   uuid primary key default gen_random_uuid(),
  name                 flowmesh.tetrahedron_name not null,
  node_timeout_seconds integer not null default 300,
  last_heartbeat_at    timestamptz,
  created_at           timestamptz not null default now(),
  constraint tetrahedrons_node_timeout_seconds_check check (node_timeout_seconds > 0)
);
comment on table public.tetrahedrons is
  'A mesh group (a household, a site, a camera cluster). last_heartbeat_at is maintained from mesh_heartbeats by a trigger.';
comment on column public.tetrahedrons.node_timeout_seconds is
  'A node of this tetrahedron with no heartbeat for longer than this is offline (see public.nodes).';
comment on column public.tetrahedrons.last_heartbeat_at is
  'Time of the newest heartbeat recorded for any member; null when none ever arrived.';
create unique index if not exists tetrahedrons_name_idx on public.tetrahedrons (name);

create table if not exists public.tetrahedron_vertices (
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  node_id        flowmesh.node_id not null,
  user_id        uuid,
  created_at     timestamptz not null default now(),
  primary key (tetrahedron_id, node_id)
);
comment on table public.tetrahedron_vertices is
  'Membership: which device (node_id) belongs to which tetrahedron, and the user (auth.uid()) who owns it. Row-level security is written against this table.';
create index if not exists tetrahedron_vertices_user_id_idx
  on public.tetrahedron_vertices (user_id);

create table if not exists public.guardian_alerts (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  alert_type     text not null,
  node_id        flowmesh.node_id,
  severity       text not null default 'warning',
  message        text not null,
  details        jsonb not null default '{}'::jsonb,
  created_at     timestamptz not null default now(),
  resolved_at    timestamptz,
  -- keys include the tetrahedron, so each shard of a distributed fleet enforces its own
  constraint guardian_alerts_pkey primary key (id, tetrahedron_id),
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

-- ownership: the nodes a user may write as (heartbeats, events, registration)
-- security definer so policies can read tetrahedron_vertices without
-- recursing into its own policy.
create or replace function flowmesh.owned_vertices()
returns table (tetrahedron_id uuid, node_id text)
language sql stable security definer
set search_path = ''
as $$
  select v.tetrahedron_id, v.node_id::text
    from public.tetrahedron_vertices v
   where v.user_id = (select auth.uid())
$$;
comment on function flowmesh.owned_vertices() is
  'The vertices (tetrahedron, node) the current user (auth.uid()) owns: the nodes they may write as; empty outside an authenticated request. flowmesh.authorize_writer, the heartbeat insert policy and flowmesh.member_tetrahedron_ids all read it. Example: select node_id from flowmesh.owned_vertices(); -> alice-pi';
revoke all on function flowmesh.owned_vertices() from public, anon;
grant execute on function flowmesh.owned_vertices() to authenticated, service_role;

-- membership helper used by every policy -----------------------------------
create or replace function flowmesh.member_tetrahedron_ids()
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
  select o.tetrahedron_id from flowmesh.owned_vertices() o
$$;
comment on function flowmesh.member_tetrahedron_ids() is
  'Ids of the tetrahedrons the current user (auth.uid()) is a vertex of (flowmesh.owned_vertices); empty outside an authenticated request.';
revoke all on function flowmesh.member_tetrahedron_ids() from public, anon;
grant execute on function flowmesh.member_tetrahedron_ids() to authenticated, service_role;

-- row-level security -------------------------------------------------------
alter table public.tetrahedrons enable row level security;
alter table public.tetrahedron_vertices enable row level security;
alter table public.guardian_alerts enable row level security;

drop policy if exists tetrahedrons_select_authenticated on public.tetrahedrons;
create policy tetrahedrons_select_authenticated on public.tetrahedrons
  for select to authenticated
  using (id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists tetrahedron_vertices_select_authenticated on public.tetrahedron_vertices;
create policy tetrahedron_vertices_select_authenticated on public.tetrahedron_vertices
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists guardian_alerts_select_authenticated on public.guardian_alerts;
create policy guardian_alerts_select_authenticated on public.guardian_alerts
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

-- table privileges: policies decide rows, grants decide operations ---------
-- revoke from all three first so that re-running converges on the same ACL
revoke all on table public.tetrahedrons, public.tetrahedron_vertices, public.guardian_alerts
  from anon, authenticated, service_role;
grant select on table public.tetrahedrons, public.tetrahedron_vertices, public.guardian_alerts
  to authenticated;
grant all on table public.tetrahedrons, public.tetrahedron_vertices, public.guardian_alerts
  to service_role;
