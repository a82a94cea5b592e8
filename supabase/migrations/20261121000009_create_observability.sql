-- 0009_create_observability.sql
-- What monitoring and analysts read: every run of the heartbeat check is
-- recorded (with its duration) whoever ran it (pg_cron, the monitor, the
-- loop), and views answer the common questions: heartbeats per minute, node
-- status over time, alert history, silent tetrahedrons. Views run with the
-- caller's rights, so row-level security applies to them.

create table if not exists public.check_runs (
  id                bigint generated always as identity primary key,
  threshold_minutes integer not null,
  tetrahedron_id    uuid references public.tetrahedrons (id) on delete cascade,
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

create or replace function flowmesh.recorded_check(threshold_minutes integer, only_tetrahedron uuid)
returns setof public.guardian_alerts
language plpgsql
set search_path = ''
as $$
declare
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_opened integer;
begin
  return query select * from flowmesh.check_heartbeats(threshold_minutes, only_tetrahedron);
  get diagnostics v_opened = row_count;
  insert into public.check_runs
         (threshold_minutes, tetrahedron_id, started_at, duration_ms, alerts_opened, run_by)
  values (threshold_minutes, only_tetrahedron, v_started,
          extract(epoch from pg_catalog.clock_timestamp() - v_started) * 1000, v_opened,
          flowmesh.caller());
end
$$;
comment on function flowmesh.recorded_check(integer, uuid) is
  'flowmesh.check_heartbeats, timed and recorded in check_runs.';
revoke all on function flowmesh.recorded_check(integer, uuid) from public, anon, authenticated;
grant execute on function flowmesh.recorded_check(integer, uuid) to service_role;

create or replace function public.check_mesh_heartbeats_and_alert(threshold_minutes integer)
returns setof public.guardian_alerts
language sql security definer
set search_path = ''
as $$
  select * from flowmesh.recorded_check(threshold_minutes, null)
$$;
create or replace function public.check_mesh_heartbeats_and_alert(threshold_minutes integer, t_uuid uuid)
returns setof public.guardian_alerts
language sql security definer
set search_path = ''
as $$
  select * from flowmesh.recorded_check(threshold_minutes, t_uuid)
$$;

-- analyst views and functions --------------------------------------------------------
create or replace function public.heartbeats_per_minute(since interval default '1 hour')
returns table (tetrahedron_id uuid, name text, minute timestamptz, heartbeats bigint)
language sql stable
set search_path = ''
as $$
  select h.tetrahedron_id, t.name, pg_catalog.date_trunc('minute', h.created_at), count(*)
    from public.mesh_heartbeats h
    join public.tetrahedrons t on t.id = h.tetrahedron_id
   where h.created_at >= now() - since
   group by 1, 2, 3
   order by 3, 2
$$;
comment on function public.heartbeats_per_minute(interval) is
  'Heartbeats per tetrahedron per minute over the last `since` (default 1 hour); row-level security applies. Example: select name, minute, heartbeats from heartbeats_per_minute(''15 minutes'');';

create or replace view public.node_status_timeline with (security_invoker = true) as
select h.tetrahedron_id, t.name as tetrahedron, h.node_id, h.status, h.health_score,
       h.changed_at as since,
       pg_catalog.lead(h.changed_at) over (partition by h.tetrahedron_id, h.node_id
                                           order by h.changed_at, h.id) as until
  from public.node_status_history h
  join public.tetrahedrons t on t.id = h.tetrahedron_id;
comment on view public.node_status_timeline is
  'Each node''s status periods: status from since until the next change (until null: current). Example: select node_id, status, since, until from node_status_timeline where tetrahedron = ''home'' order by since;';

create or replace view public.nodes_by_status as
select t.id as tetrahedron_id, t.name as tetrahedron,
       flowmesh.effective_status(n.status, n.last_heartbeat_at, n.created_at, t.node_timeout_seconds) as status,
       count(*) as nodes
  from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 group by 1, 2, 3;
alter view public.nodes_by_status set (security_invoker = true);
comment on view public.nodes_by_status is
  'Nodes per tetrahedron and status as of now (offline once silent past the timeout).';

create or replace view public.alert_history with (security_invoker = true) as
select a.id, a.tetrahedron_id, t.name as tetrahedron, a.alert_type, a.node_id, a.severity, a.message,
       a.created_at, a.resolved_at, coalesce(a.resolved_at, now()) - a.created_at as open_for,
       a.details
  from public.guardian_alerts a
  join public.tetrahedrons t on t.id = a.tetrahedron_id;
comment on view public.alert_history is
  'Every guardian alert with its tetrahedron''s name and how long it was (or has been) open. Example: select alert_type, count(*), avg(open_for) from alert_history group by 1;';

create or replace view public.silent_tetrahedrons with (security_invoker = true) as
select t.id as tetrahedron_id, t.name, t.last_heartbeat_at, now() - t.last_heartbeat_at as silent_for,
       exists (select 1 from public.guardian_alerts a
                where a.tetrahedron_id = t.id and a.alert_type = 'mesh-degrading'
                  and a.resolved_at is null) as alerted
  from public.tetrahedrons t
 where flowmesh.is_stale(t.last_heartbeat_at, 60);
comment on view public.silent_tetrahedrons is
  'Tetrahedrons with no heartbeat in the last hour (or none ever), and whether a mesh-degrading alert is open; stale_tetrahedrons(minutes) takes another threshold.';

revoke all on public.node_status_timeline, public.nodes_by_status, public.alert_history,
  public.silent_tetrahedrons from anon, authenticated, service_role;
grant select on public.node_status_timeline, public.nodes_by_status, public.alert_history,
  public.silent_tetrahedrons to authenticated, service_role;
revoke all on function public.heartbeats_per_minute(interval) from public, anon;
grant execute on function public.heartbeats_per_minute(interval) to authenticated, service_role;
