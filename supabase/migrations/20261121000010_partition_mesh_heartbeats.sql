-- 0010_partition_mesh_heartbeats.sql
-- mesh_heartbeats grows fastest: partition it by day of created_at, with
-- partitions created ahead (and on demand by the RPCs) and dropped past the
-- retention period by maintain_heartbeat_partitions, which a schedule runs.
-- Partitions live in the private schema flowmesh_partitions: readers and
-- writers go through public.mesh_heartbeats, whose row-level security and
-- trigger apply, and the seed's queries work unchanged.
--
-- A unique key on a partitioned table must include the partition key, so
-- batch idempotency is now by (tetrahedron, src, seq, created_at) with
-- created_at exactly the sender's "at": a replay lands on the same key. "at"
-- is therefore required in batches, and a clock more than 300 s ahead is
-- refused (22023) rather than silently moved, which would break replays.

create schema if not exists flowmesh_partitions;
comment on schema flowmesh_partitions is
  'Daily partitions of public.mesh_heartbeats; not part of the API (use the parent table).';
revoke all on schema flowmesh_partitions from public;

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

-- convert the plain table, once ------------------------------------------------------------
do $$
declare
  v_first date;
  v_day date;
begin
  if (select c.relkind from pg_catalog.pg_class c where c.oid = 'public.mesh_heartbeats'::regclass) <> 'r' then
    return;
  end if;
  -- returns the table's row type; recreated below for the new table
  drop function public.record_mesh_heartbeat(uuid, text, jsonb);
  alter table public.mesh_heartbeats set schema flowmesh;  -- frees every name in public
  create table public.mesh_heartbeats (
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
  select coalesce(min(h.created_at) at time zone 'UTC', now() at time zone 'UTC')::date
    into v_first from flowmesh.mesh_heartbeats h;
  v_day := v_first;
  while v_day <= (now() at time zone 'UTC')::date + 7 loop
    perform flowmesh.ensure_heartbeat_partition(v_day);
    v_day := v_day + 1;
  end loop;
  insert into public.mesh_heartbeats (id, tetrahedron_id, source, payload, seq, created_at)
  overriding system value
  select h.id, h.tetrahedron_id, h.source, h.payload, h.seq, h.created_at from flowmesh.mesh_heartbeats h;
  perform pg_catalog.setval(pg_catalog.pg_get_serial_sequence('public.mesh_heartbeats', 'id'),
                            coalesce((select max(h.id) from flowmesh.mesh_heartbeats h), 0) + 1, false);
  drop table flowmesh.mesh_heartbeats;
end
$$;

comment on table public.mesh_heartbeats is
  'Append-only log of heartbeats, partitioned by day of created_at (partitions in flowmesh_partitions, dropped past the retention). source is the sending node; seq its sequence number (null for single record_mesh_heartbeat calls); (tetrahedron, source, seq, created_at) is unique, so replayed batches insert nothing.';
create index if not exists mesh_heartbeats_tetrahedron_id_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, created_at desc);
create index if not exists mesh_heartbeats_tetrahedron_id_source_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, source, created_at desc);
create index if not exists mesh_heartbeats_created_at_idx
  on public.mesh_heartbeats (created_at);
create unique index if not exists mesh_heartbeats_tetrahedron_id_source_seq_created_at_idx
  on public.mesh_heartbeats (tetrahedron_id, source, seq, created_at);

alter table public.mesh_heartbeats enable row level security;
drop policy if exists mesh_heartbeats_select_authenticated on public.mesh_heartbeats;
create policy mesh_heartbeats_select_authenticated on public.mesh_heartbeats
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
drop policy if exists mesh_heartbeats_insert_authenticated on public.mesh_heartbeats;
create policy mesh_heartbeats_insert_authenticated on public.mesh_heartbeats
  for insert to authenticated
  with check (tetrahedron_id in (select flowmesh.member_tetrahedron_ids())
              and created_at <= now());
revoke all on table public.mesh_heartbeats from anon, authenticated, service_role;
grant select, insert on table public.mesh_heartbeats to authenticated;
grant all on table public.mesh_heartbeats to service_role;

create or replace trigger mesh_heartbeats_apply
  after insert on public.mesh_heartbeats
  referencing new table as new_heartbeats
  for each statement execute function flowmesh.apply_heartbeats();

-- the write path, partition-aware ---------------------------------------------------------------
create or replace function flowmesh.batch_item_problem(item jsonb) returns text
language sql stable
set search_path = ''
as $$
  select case
    when pg_catalog.jsonb_typeof(item) is distinct from 'object'
      then '22023 must be a JSON object with src, seq, at and payload, got ' || coalesce(pg_catalog.jsonb_typeof(item), 'null')
    when pg_catalog.jsonb_typeof(item -> 'seq') is distinct from 'number'
      then '22023 seq must be a positive integer, got ' || coalesce(pg_catalog.jsonb_typeof(item -> 'seq'), 'nothing')
    when (item ->> 'seq')::numeric <= 0 or (item ->> 'seq')::numeric > 9223372036854775807
         or (item ->> 'seq')::numeric <> pg_catalog.trunc((item ->> 'seq')::numeric)
      then '22023 seq must be a positive integer, got ' || (item ->> 'seq')
    when pg_catalog.jsonb_typeof(item -> 'at') is distinct from 'number'
      then '22023 at must be a Unix time in seconds, got ' || coalesce(pg_catalog.jsonb_typeof(item -> 'at'), 'nothing')
    when (item ->> 'at')::numeric <= 0 or (item ->> 'at')::numeric >= 32503680000
      then '22023 at must be a Unix time in seconds, got ' || (item ->> 'at')
    when (item ->> 'at')::numeric > extract(epoch from now()) + 300
      then '22023 at is ' || pg_catalog.round((item ->> 'at')::numeric - extract(epoch from now()))
           || ' s ahead of the server clock; the limit is 300 s (fix the device clock)'
    when item ? 'src' and pg_catalog.jsonb_typeof(item -> 'src') is distinct from 'string'
      then '22023 src must be a string, got ' || pg_catalog.jsonb_typeof(item -> 'src')
    else flowmesh.heartbeat_problem(item ->> 'src', item -> 'payload')
  end
$$;
comment on function flowmesh.batch_item_problem(jsonb) is
  'Validation rule for one element of a record_mesh_heartbeats batch: {src, seq, at, payload}; at may be at most 300 s ahead of the server clock.';

create or replace function public.record_mesh_heartbeats(t_uuid uuid, batch jsonb)
returns table (received integer, inserted integer, duplicates integer)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_received integer;
  v_inserted integer;
  v_bad record;
begin
  perform flowmesh.authorize_writer(t_uuid);
  v_received := flowmesh.batch_length(batch, 'heartbeats');

  select i.ord - 1 as idx, flowmesh.batch_item_problem(i.item) as problem
    into v_bad
    from pg_catalog.jsonb_array_elements(batch) with ordinality as i(item, ord)
   where flowmesh.batch_item_problem(i.item) is not null
   order by i.ord
   limit 1;
  if found then
    perform flowmesh.raise_problem(v_bad.problem, 'batch element ' || v_bad.idx);
  end if;

  perform flowmesh.ensure_heartbeat_partition(d.day)
     from (select distinct (pg_catalog.to_timestamp((i.item ->> 'at')::double precision)
                            at time zone 'UTC')::date as day
             from pg_catalog.jsonb_array_elements(batch) as i(item)) d;

  insert into public.mesh_heartbeats (tetrahedron_id, source, seq, payload, created_at)
  select t_uuid, i.item ->> 'src', (i.item ->> 'seq')::bigint, i.item -> 'payload',
         pg_catalog.to_timestamp((i.item ->> 'at')::double precision)
    from pg_catalog.jsonb_array_elements(batch) as i(item)
  on conflict (tetrahedron_id, source, seq, created_at) do nothing;
  get diagnostics v_inserted = row_count;

  return query select v_received, v_inserted, v_received - v_inserted;
end
$$;
comment on function public.record_mesh_heartbeats(uuid, jsonb) is
  'Record a batch of heartbeats for one tetrahedron, atomically and idempotently. batch is a JSON array of {"src": text, "seq": positive integer, "at": Unix seconds (at most 300 s ahead of the server), "payload": object}. A (src, seq, at) already recorded is skipped, so replaying a batch inserts nothing. Returns received, inserted and duplicates. One bad element rejects the whole batch with its index in the message. Example: select * from record_mesh_heartbeats(''6f1c...''::uuid, ''[{"src": "pi", "seq": 1, "at": 1763740000, "payload": {}}]'') -> (1, 1, 0).';

create or replace function public.record_mesh_heartbeat(t_uuid uuid, src text, payload jsonb)
returns public.mesh_heartbeats
language plpgsql security definer
set search_path = ''
as $$
declare
  v_row public.mesh_heartbeats;
begin
  perform flowmesh.authorize_writer(t_uuid);
  perform flowmesh.raise_problem(flowmesh.heartbeat_problem(src, record_mesh_heartbeat.payload));
  perform flowmesh.ensure_heartbeat_partition((now() at time zone 'UTC')::date);
  insert into public.mesh_heartbeats (tetrahedron_id, source, payload)
  values (t_uuid, src, record_mesh_heartbeat.payload)
  returning * into v_row;
  return v_row;
end
$$;
comment on function public.record_mesh_heartbeat(uuid, text, jsonb) is
  'Record one heartbeat from src in tetrahedron t_uuid and return the stored row. Updates tetrahedrons.last_heartbeat_at and the nodes row of src. Callable by service_role and by authenticated vertices of the tetrahedron. Example: select id, source from record_mesh_heartbeat(''6f1c...''::uuid, ''device-abc'', ''{"ping": true}'');';

-- retention ------------------------------------------------------------------------------------------
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
  if retention is null or retention < interval '1 day' then
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
  'Create mesh_heartbeats partitions for today and days_ahead days, drop those whose day is older than retention (default 30 days); returns counts and the range kept. Run daily by the schedules. Example: select * from maintain_heartbeat_partitions(''30 days''); -> (1, 1, 2026-10-22, 2026-11-28)';

revoke all on function flowmesh.heartbeat_partition_name(date), flowmesh.ensure_heartbeat_partition(date)
  from public, anon, authenticated;
grant execute on function flowmesh.heartbeat_partition_name(date), flowmesh.ensure_heartbeat_partition(date)
  to service_role;
revoke all on function flowmesh.batch_item_problem(jsonb) from public, anon;
grant execute on function flowmesh.batch_item_problem(jsonb) to authenticated, service_role;
revoke all on function public.record_mesh_heartbeat(uuid, text, jsonb) from public, anon;
grant execute on function public.record_mesh_heartbeat(uuid, text, jsonb) to authenticated, service_role;
revoke all on function public.maintain_heartbeat_partitions(interval, integer) from public, anon, authenticated;
grant execute on function public.maintain_heartbeat_partitions(interval, integer) to service_role;
