-- 0011_create_analyst_views.sql
-- What dashboards, the exporter and analysts read: the mesh summary (with
-- the badge rule, up / late / down),
-- heartbeats per minute, nodes by status, node status over time, alert
-- history, silent tetrahedrons. Every status here is read from public.nodes,
-- so every view agrees with `flowmesh nodes` and `flowmesh status` as of now.
-- Views run with the caller's rights (security_invoker), so row-level
-- security applies to them.

-- The badge rule, written once: what one word says about a tetrahedron.
create or replace function flowmesh.tetrahedron_status(online bigint, degraded bigint, offline bigint,
                                                       open_alerts bigint)
returns text
language sql immutable
as $$
  select case when coalesce(online, 0) + coalesce(degraded, 0) = 0 then 'down'
              when coalesce(degraded, 0) + coalesce(offline, 0) + coalesce(open_alerts, 0) > 0 then 'late'
              else 'up' end
$$;
comment on function flowmesh.tetrahedron_status(bigint, bigint, bigint, bigint) is
  'A tetrahedron in one word, as its badge says it: down when no node is online or degraded (every node silent past the timeout, or none registered); late when some node is degraded or offline or an alert is open; up when every node is online and no alert is open. Inlinable: no SET clause. Example: select flowmesh.tetrahedron_status(2, 1, 0, 0); -> late';

create or replace view public.mesh_summary with (security_invoker = true) as
select t.id as tetrahedron_id,
       t.name,
       coalesce(n.online, 0) as online,
       coalesce(n.degraded, 0) as degraded,
       coalesce(n.offline, 0) as offline,
       n.average_health,
       n.last_prediction,
       n.highest_risk,
       t.last_heartbeat_at,
       coalesce(n.nodes, 0) as nodes,
       coalesce(a.open_alerts, 0) as open_alerts,
       flowmesh.tetrahedron_status(n.online, n.degraded, n.offline, a.open_alerts) as status
  from public.tetrahedrons t
  left join (select s.tetrahedron_id,
                    count(*) filter (where s.status = 'online') as online,
                    count(*) filter (where s.status = 'degraded') as degraded,
                    count(*) filter (where s.status = 'offline') as offline,
                    count(*) as nodes,
                    avg(s.health_score) as average_health,
                    max(s.predicted_at) as last_prediction,
                    max(s.predicted_risk) as highest_risk
               from public.nodes s
              group by s.tetrahedron_id) n on n.tetrahedron_id = t.id
  left join (select g.tetrahedron_id, count(*) as open_alerts
               from public.guardian_alerts g
              where g.resolved_at is null
              group by g.tetrahedron_id) a on a.tetrahedron_id = t.id;
comment on view public.mesh_summary is
  'Per tetrahedron: nodes online, degraded and offline as of now (public.nodes), average health and the last prediction; the highest predicted risk, the last heartbeat, the open alerts, and status: up, late or down (flowmesh.tetrahedron_status, what its badge says). The dashboard''s fleet overview. Example: select name, online, degraded, offline, status from mesh_summary;';

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
