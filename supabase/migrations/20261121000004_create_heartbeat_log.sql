-- 0004_create_heartbeat_log.sql
-- The heartbeat log, public.mesh_heartbeats: append-only, the table that grows
-- fastest, so it is partitioned by day of created_at from the start. The
-- partitions live in the private schema flowmesh_partitions (readers and
-- writers use the parent, whose row-level security and trigger apply).
-- maintain_heartbeat_partitions creates the days ahead and drops the days past
-- the retention; the RPCs create any other day they need on demand.
--
-- A unique key on a partitioned table must include the partition key, so
-- batches are idempotent by (tetrahedron, source, seq, created_at), with
-- created_at the sender's own time (see record_mesh_heartbeats). Every key
-- also includes tetrahedron_id, the column a distributed fleet shards by.

create schema if not exists flowmesh_partitions;
comment on schema flowmesh_partitions is
  'Daily partitions of public.mesh_heartbeats; not part of the API (use the parent table).';
revoke all on schema flowmesh_partitions from public;

create table if not exists public.mesh_heartbeats (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  source         flowmesh.node_id not null,
  payload        jsonb not null default '{}'::jsonb,
  seq            bigint,
  created_at     timestamptz not null default now(),
  constraint mesh_heartbeats_pkey primary key (id, tetrahedron_id, created_at),
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
-- one node's most recent heartbeats: the window failure prediction reads
create index if not exists mesh_heartbeats_tetrahedron_id_source_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, source, created_at desc);

alter table public.mesh_heartbeats enable row level security;

drop policy if exists mesh_heartbeats_select_authenticated on public.mesh_heartbeats;
create policy mesh_heartbeats_select_authenticated on public.mesh_heartbeats
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));

drop policy if exists mesh_heartbeats_insert_authenticated on public.mesh_heartbeats;
-- a user writes only as the nodes they own (as through the RPCs, see
-- flowmesh.authorize_writer), and no heartbeats from the future: one would
-- hide the tetrahedron from the staleness check until that time came
create policy mesh_heartbeats_insert_authenticated on public.mesh_heartbeats
  for insert to authenticated
  with check ((tetrahedron_id, source::text) in (select o.tetrahedron_id, o.node_id
                                                  from flowmesh.owned_vertices() o)
              and created_at <= now());

revoke all on table public.mesh_heartbeats from anon, authenticated, service_role;
grant select, insert on table public.mesh_heartbeats to authenticated;
grant all on table public.mesh_heartbeats to service_role;

-- partitions -----------------------------------------------------------------
-- stable, as to_char is: declared immutable it could not be inlined
create or replace function flowmesh.heartbeat_partition_name(day date) returns text
language sql stable
as $$
  select 'mesh_heartbeats_' || pg_catalog.to_char(day, 'YYYYMMDD')
$$;
comment on function flowmesh.heartbeat_partition_name(date) is
  'Name of the mesh_heartbeats partition holding the UTC day. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified. Example: select flowmesh.heartbeat_partition_name(''2026-11-22''); -> mesh_heartbeats_20261122';

create or replace function flowmesh.heartbeat_partition_exists(day date) returns boolean
language sql stable
as $$
  select pg_catalog.to_regclass('flowmesh_partitions.' || flowmesh.heartbeat_partition_name(day)) is not null
$$;
comment on function flowmesh.heartbeat_partition_exists(date) is
  'Whether the mesh_heartbeats partition holding the UTC day exists. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified, so a writer checks the days it needs without a function call per day. Example: select flowmesh.heartbeat_partition_exists((now() at time zone ''UTC'')::date); -> true';

create or replace function flowmesh.ensure_heartbeat_partition(day date) returns boolean
language plpgsql security definer
set search_path = ''
as $$
declare
  v_name text := flowmesh.heartbeat_partition_name(day);
begin
  if flowmesh.heartbeat_partition_exists(day) then
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

revoke all on function flowmesh.heartbeat_partition_name(date), flowmesh.heartbeat_partition_exists(date),
  flowmesh.ensure_heartbeat_partition(date) from public, anon, authenticated;
grant execute on function flowmesh.heartbeat_partition_name(date), flowmesh.heartbeat_partition_exists(date),
  flowmesh.ensure_heartbeat_partition(date) to service_role;

-- retention --------------------------------------------------------------------
create or replace function public.maintain_heartbeat_partitions(
  retention interval default '30 days', days_ahead integer default 7)
returns table (created integer, dropped integer, oldest date, newest date)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_created integer := 0;
  v_dropped integer := 0;
  v_today date := (now() at time zone 'UTC')::date;
  v_cutoff date;
  v_part record;
begin
  if retention < interval '1 day' then
    raise exception 'retention must be at least 1 day, got %', retention using errcode = '22023';
  end if;
  if days_ahead is null or days_ahead < 1 or days_ahead > 366 then
    raise exception 'days_ahead must be between 1 and 366, got %', days_ahead using errcode = '22023';
  end if;
  for i in 0 .. days_ahead loop
    if flowmesh.ensure_heartbeat_partition(v_today + i) then
      v_created := v_created + 1;
    end if;
  end loop;
  -- a partition goes once its whole day is older than the retention
  v_cutoff := ((now() - retention) at time zone 'UTC')::date;
  for v_part in
    select c.relname
      from pg_catalog.pg_inherits i
      join pg_catalog.pg_class c on c.oid = i.inhrelid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where i.inhparent = 'public.mesh_heartbeats'::pg_catalog.regclass
       and n.nspname = 'flowmesh_partitions'
       and c.relname ~ '^mesh_heartbeats_[0-9]{8}$'
       and pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD') < v_cutoff
  loop
    execute pg_catalog.format('drop table flowmesh_partitions.%I', v_part.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return query
    select v_created, v_dropped,
           min(pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD')),
           max(pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD'))
      from pg_catalog.pg_inherits i
      join pg_catalog.pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'public.mesh_heartbeats'::pg_catalog.regclass;
end
$$;
comment on function public.maintain_heartbeat_partitions(interval, integer) is
  'Create the mesh_heartbeats partitions for today and the days_ahead days after it (default 7), and drop every partition whose UTC day is older than retention (default 30 days; null drops nothing); returns counts and the range kept. The daily schedule runs it. Example: select * from maintain_heartbeat_partitions(''30 days''); -> (1, 1, 2026-10-22, 2026-11-28)';

revoke all on function public.maintain_heartbeat_partitions(interval, integer) from public, anon, authenticated;
grant execute on function public.maintain_heartbeat_partitions(interval, integer) to service_role;

-- today and the week ahead, dropping nothing (re-running this file must not
-- apply a retention the operator did not choose)
select from public.maintain_heartbeat_partitions(retention => null);
