-- 0011_create_analyst_views.sql
-- What dashboards, the exporter and analysts read: the mesh summary,
-- heartbeats per minute, nodes by status, node status over time, alert
-- history, silent tetrahedrons. Every status here is read from public.nodes,
-- so every view agrees with `flowmesh nodes` and `flowmesh status` as of now.
-- Views run with the caller's rights (security_invoker), so row-level
-- security applies to them.

create or replace view public.mesh_summary with (security_invoker = true) as
select t.id as tetrahedron_id,
       t.name,
       count(n.node_id) filter (where n.status = 'online') as online,
       count(n.node_id) filter (where n.status = 'degraded') as degraded,
       count(n.node_id) filter (where n.status = 'offline') as offline,
       avg(n.health_score) as average_health,
       max(n.predicted_at) as last_prediction,
       max(n.predicted_risk) as highest_risk,
       t.last_heartbeat_at
  from public.tetrahedrons t
  left join public.nodes n on n.tetrahedron_id = t.id
 group by t.id;
comment on view public.mesh_summary is
  'Per tetrahedron: nodes online, degraded and offline as of now (public.nodes), average health and the last prediction; plus the highest predicted risk and the last heartbeat. Example: select name, online, degraded, offline from mesh_summary;';

create or replace view public.nodes_by_status with (security_invoker = true) as
select t.id as tetrahedron_id, t.name as tetrahedron, n.status, count(*) as nodes
  from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 group by 1, 2, 3;
comment on view public.nodes_by_status is
  'Nodes per tetrahedron and status as of now (public.nodes: offline once silent past the timeout). Example: select tetrahedron, status, nodes from nodes_by_status;';

create or replace view public.node_status_timeline with (security_invoker = true) as
with periods as (
  select h.id, h.tetrahedron_id, h.node_id, h.status, h.health_score, h.changed_at
    from public.node_status_history h
  union all
  -- the offline period in progress that no pass has logged yet
  select null, u.tetrahedron_id, u.node_id, u.status, u.health_score, u.changed_at
    from flowmesh.unlogged_offline_periods u
)
select p.tetrahedron_id, t.name as tetrahedron, p.node_id, p.status, p.health_score,
       p.changed_at as since,
       pg_catalog.lead(p.changed_at) over (partition by p.tetrahedron_id, p.node_id
                                           order by p.changed_at, p.id nulls last) as until
  from periods p
  join public.tetrahedrons t on t.id = p.tetrahedron_id;
comment on view public.node_status_timeline is
  'Each node''s status periods: status from since until the next change (until null: current, and the same status public.nodes gives now). An offline period starts at the last heartbeat plus the timeout, logged or not. Example: select node_id, status, since, until from node_status_timeline where tetrahedron = ''home'' order by since;';

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
  'Tetrahedrons with no heartbeat in the last hour (or none ever), and whether a mesh-degrading alert is open; stale_tetrahedrons(minutes) takes another threshold. Example: select name, silent_for, alerted from silent_tetrahedrons;';

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

revoke all on public.mesh_summary, public.nodes_by_status, public.node_status_timeline,
  public.alert_history, public.silent_tetrahedrons from anon, authenticated, service_role;
grant select on public.mesh_summary, public.nodes_by_status, public.node_status_timeline,
  public.alert_history, public.silent_tetrahedrons to authenticated, service_role;
revoke all on function public.heartbeats_per_minute(interval) from public, anon;
grant execute on function public.heartbeats_per_minute(interval) to authenticated, service_role;
