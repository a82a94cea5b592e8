-- 0012_create_scheduled_checks.sql
-- The work that runs on a cadence, defined once. pg_cron's jobs (`flowmesh
-- schedule install`) and the fallback loop (`python -m monitors.mesh_health
-- --every`) call the same two functions with the same arguments:
--   run_scheduled_checks(threshold_minutes, window_size)   every period
--   maintain_heartbeat_partitions(retention)               once a day
-- so the threshold, the prediction window and the retention are chosen in one
-- place, the call, with their defaults here and in 0004.

create or replace function public.run_scheduled_checks(
  threshold_minutes integer default 60, window_size integer default 30)
returns table (checked integer, stale integer, alerts_opened integer, nodes_scored integer,
               risk_alerts_opened integer, risk_alerts_resolved integer, marked_offline integer,
               decisions_closed integer)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_opened integer;
  v_prediction record;
begin
  select count(*) into v_opened from public.check_mesh_heartbeats_and_alert(threshold_minutes);
  select * into v_prediction from public.run_prediction_pass(window_size);
  return query
    select (select count(*)::integer from public.tetrahedrons),
           (select count(*)::integer from public.tetrahedrons t
             where flowmesh.is_stale(t.last_heartbeat_at, threshold_minutes)),
           v_opened, v_prediction.nodes_scored, v_prediction.alerts_opened,
           v_prediction.alerts_resolved, v_prediction.marked_offline,
           public.close_expired_decisions();
end
$$;
comment on function public.run_scheduled_checks(integer, integer) is
  'One cycle of the scheduled work, as pg_cron and the fallback loop run it: the heartbeat check (check_mesh_heartbeats_and_alert(threshold_minutes), default 60: a tetrahedron silent longer gets a mesh-degrading alert), the prediction pass (run_prediction_pass(window_size), default 30 heartbeats per node; it also logs offline periods), and closing expired guardian decisions. Returns the tetrahedrons checked and stale, the alerts opened, the nodes scored, risk alerts opened and resolved, offline periods logged, decisions closed. Idempotent. Retention is the separate daily maintain_heartbeat_partitions(retention). Example: select * from run_scheduled_checks(threshold_minutes => 60, window_size => 30); -> (12, 1, 1, 40, 0, 0, 2, 0)';

revoke all on function public.run_scheduled_checks(integer, integer) from public, anon, authenticated;
grant execute on function public.run_scheduled_checks(integer, integer) to service_role;
