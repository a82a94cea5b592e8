-- 0007_create_heartbeat_checks.sql
-- Staleness and the mesh-degrading guardian alert. The rule "a tetrahedron is
-- stale when it has had no heartbeat within the threshold, or none ever" is
-- written once (flowmesh.is_stale) and used by the checker, the monitor and
-- any analyst query. check_mesh_heartbeats_and_alert opens at most one alert
-- per tetrahedron (the partial unique index on guardian_alerts guarantees it,
-- even with concurrent checkers) and resolves it when heartbeats come back.
-- Every run is recorded in check_runs (with its duration) whoever ran it:
-- pg_cron, the monitor, the fallback loop.

create or replace function flowmesh.is_stale(last_heartbeat_at timestamptz, threshold_minutes integer)
returns boolean
language sql stable
as $$
  select last_heartbeat_at is null
      or last_heartbeat_at < now() - pg_catalog.make_interval(mins => threshold_minutes)
$$;
comment on function flowmesh.is_stale(timestamptz, integer) is
  'The staleness rule: no heartbeat ever, or the last one older than threshold_minutes. Inlinable: no SET clause, so the planner turns it into index scans of tetrahedrons_last_heartbeat_at_idx and the check''s cost follows the number of stale tetrahedrons; every name is schema-qualified.';

-- the check reads only stale tetrahedrons: "is null" and "older than" are both index scans
create index if not exists tetrahedrons_last_heartbeat_at_idx
  on public.tetrahedrons (last_heartbeat_at nulls first);

create or replace function flowmesh.check_threshold(threshold_minutes integer) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if threshold_minutes is null then
    raise exception 'threshold_minutes must not be null' using errcode = '22004';
  end if;
  if threshold_minutes < 0 then
    raise exception 'threshold_minutes must be zero or more, got %', threshold_minutes
      using errcode = '22023';
  end if;
end
$$;
comment on function flowmesh.check_threshold(integer) is
  'Raises 22004/22023 unless threshold_minutes is a non-negative integer.';

create or replace function public.stale_tetrahedrons(threshold_minutes integer)
returns table (tetrahedron_id uuid, name text, last_heartbeat_at timestamptz, silent_for interval)
language plpgsql stable
set search_path = ''
as $$
begin
  perform flowmesh.check_threshold(threshold_minutes);
  return query
    select t.id, t.name::text, t.last_heartbeat_at, now() - t.last_heartbeat_at
      from public.tetrahedrons t
     where flowmesh.is_stale(t.last_heartbeat_at, threshold_minutes)
     order by t.last_heartbeat_at nulls first, t.name;
end
$$;
comment on function public.stale_tetrahedrons(integer) is
  'Tetrahedrons with no heartbeat within threshold_minutes (or none ever), most silent first; silent_for is null when none ever arrived. Runs with the caller''s rights, so row-level security applies. Example: select name, silent_for from stale_tetrahedrons(60);';

create table if not exists public.check_runs (
  id                bigint generated always as identity primary key,
  threshold_minutes integer not null,
  -- no foreign key: a fleet-wide log, kept whole on the coordinator when the
  -- tetrahedrons are distributed (which it may then not reference); a deleted
  -- tetrahedron's runs stay in the log
  tetrahedron_id    uuid,
  started_at        timestamptz not null,
  duration_ms       double precision not null,
  alerts_opened     integer not null,
  run_by            text not null
);
comment on table public.check_runs is
  'One row per run of check_mesh_heartbeats_and_alert: when, how long, how many alerts it opened, by whom (tetrahedron_id set for the one-tetrahedron form).';
create index if not exists check_runs_started_at_idx on public.check_runs (started_at desc);
create index if not exists check_runs_tetrahedron_id_idx on public.check_runs (tetrahedron_id);
alter table public.check_runs enable row level security;
drop policy if exists check_runs_select_authenticated on public.check_runs;
create policy check_runs_select_authenticated on public.check_runs
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table public.check_runs from anon, authenticated, service_role;
grant select on table public.check_runs to authenticated;
grant all on table public.check_runs to service_role;

create or replace function flowmesh.check_heartbeats(threshold_minutes integer, only_tetrahedron uuid)
returns setof public.guardian_alerts
language plpgsql
set search_path = ''
as $$
declare
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_opened integer;
begin
  perform flowmesh.check_threshold(threshold_minutes);
  if only_tetrahedron is not null
     and not exists (select from public.tetrahedrons t where t.id = only_tetrahedron) then
    raise exception 'tetrahedron % does not exist', only_tetrahedron using errcode = '23503';
  end if;

  update public.guardian_alerts a
     set resolved_at = greatest(now(), a.created_at),
         details = a.details || pg_catalog.jsonb_build_object(
           'resolution', 'heartbeats resumed',
           'last_heartbeat_at', t.last_heartbeat_at)
    from public.tetrahedrons t
   where a.tetrahedron_id = t.id
     and a.alert_type = 'mesh-degrading'
     and a.node_id is null
     and a.resolved_at is null
     and (only_tetrahedron is null or t.id = only_tetrahedron)
     and not flowmesh.is_stale(t.last_heartbeat_at, threshold_minutes);

  return query
    insert into public.guardian_alerts as a (tetrahedron_id, alert_type, severity, message, details)
    select t.id, 'mesh-degrading', 'warning',
           case when t.last_heartbeat_at is null
                then pg_catalog.format('tetrahedron %s has never sent a heartbeat', t.name)
                else pg_catalog.format('tetrahedron %s has sent no heartbeat for %s (threshold %s min)',
                       t.name, pg_catalog.date_trunc('second', now() - t.last_heartbeat_at), threshold_minutes)
           end,
           pg_catalog.jsonb_build_object(
             'threshold_minutes', threshold_minutes,
             'last_heartbeat_at', t.last_heartbeat_at)
      from public.tetrahedrons t
     where flowmesh.is_stale(t.last_heartbeat_at, threshold_minutes)
       and (only_tetrahedron is null or t.id = only_tetrahedron)
    on conflict (tetrahedron_id, alert_type, node_id) where resolved_at is null do nothing
    returning a.*;
  get diagnostics v_opened = row_count;

  insert into public.check_runs
         (threshold_minutes, tetrahedron_id, started_at, duration_ms, alerts_opened, run_by)
  values (threshold_minutes, only_tetrahedron, v_started,
          extract(epoch from pg_catalog.clock_timestamp() - v_started) * 1000, v_opened,
          flowmesh.caller());
end
$$;
comment on function flowmesh.check_heartbeats(integer, uuid) is
  'Implementation of check_mesh_heartbeats_and_alert: resolve open mesh-degrading alerts of fresh tetrahedrons, open one for each stale tetrahedron without one, record the run in check_runs, return the opened alerts.';

create or replace function public.check_mesh_heartbeats_and_alert(threshold_minutes integer)
returns setof public.guardian_alerts
language sql security definer
set search_path = ''
as $$
  select * from flowmesh.check_heartbeats(threshold_minutes, null)
$$;
comment on function public.check_mesh_heartbeats_and_alert(integer) is
  'Open a mesh-degrading guardian alert for every tetrahedron with no heartbeat within threshold_minutes (or none ever) unless one is already open, resolve open ones whose heartbeats came back, record the run in check_runs, and return the alerts it opened. Safe to run repeatedly and concurrently. Example (pg_cron): select public.check_mesh_heartbeats_and_alert(60);';

create or replace function public.check_mesh_heartbeats_and_alert(threshold_minutes integer, t_uuid uuid)
returns setof public.guardian_alerts
language sql security definer
set search_path = ''
as $$
  select * from flowmesh.check_heartbeats(threshold_minutes, t_uuid)
$$;
comment on function public.check_mesh_heartbeats_and_alert(integer, uuid) is
  'The same check limited to one tetrahedron (23503 if it does not exist). Example: select id, message from check_mesh_heartbeats_and_alert(0, ''6f1c...''::uuid);';

revoke all on function flowmesh.is_stale(timestamptz, integer), flowmesh.check_threshold(integer),
  flowmesh.check_heartbeats(integer, uuid) from public, anon;
grant execute on function flowmesh.is_stale(timestamptz, integer), flowmesh.check_threshold(integer)
  to authenticated, service_role;
grant execute on function flowmesh.check_heartbeats(integer, uuid) to service_role;

revoke all on function public.stale_tetrahedrons(integer) from public, anon;
grant execute on function public.stale_tetrahedrons(integer) to authenticated, service_role;

-- the checker writes alerts for every tetrahedron: operators only
revoke all on function public.check_mesh_heartbeats_and_alert(integer),
  public.check_mesh_heartbeats_and_alert(integer, uuid) from public, anon, authenticated;
grant execute on function public.check_mesh_heartbeats_and_alert(integer),
  public.check_mesh_heartbeats_and_alert(integer, uuid) to service_role;
