-- 0009_create_failure_prediction.sql
-- Failure prediction: a trend model over each node's most recent heartbeats,
-- and the prediction pass that stores predicted_risk and opens or resolves
-- node-failure-predicted guardian alerts.
--
-- Each signal is a risk in [0, 1]; they combine as a noisy-OR,
-- risk = 1 - product(1 - signal), so one strong signal is enough and
-- several weak ones add up:
--   latency   rise projected over the next 10 min; 200 ms of rise = 1
--   loss      mean packet loss, scaled by health_rules.packet_loss.worst
--   battery   charge projected 30 min ahead; 0 % = 1, twice the degraded threshold = 0
--   thermal   hottest reading projected 10 min ahead, scaled best..worst of temperature_c
-- The window is a node's last window_size heartbeats of the last 24 hours
-- (read through mesh_heartbeats_tetrahedron_id_source_created_at_idx).
-- Slopes need at least 3 samples; with fewer, only loss and levels count.

create or replace function flowmesh.number(value jsonb) returns double precision
language sql immutable
as $$
  select case when pg_catalog.jsonb_typeof(value) = 'number' then (value #>> '{}')::double precision end
$$;
comment on function flowmesh.number(jsonb) is
  'A JSON number as double precision; null for anything else. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified.';

create or replace function public.predict_node_risk(t_uuid uuid, node text, window_size integer default 30,
                                                   as_of timestamptz default now())
returns table (risk double precision, signals jsonb)
language sql stable
as $$
  with recent as (
    select extract(epoch from h.created_at)::double precision / 60 as minute,
           flowmesh.number(h.payload -> 'metrics' -> 'latency_ms') as latency,
           flowmesh.number(h.payload -> 'metrics' -> 'packet_loss') as loss,
           flowmesh.number(h.payload -> 'metrics' -> 'battery_percent') as battery,
           flowmesh.number(h.payload -> 'metrics' -> 'temperature_c') as temperature
      from public.mesh_heartbeats h
     where h.tetrahedron_id = t_uuid and h.source = node
       -- a horizon as well as a count: partition pruning keeps this to a day or two
       and h.created_at <= as_of and h.created_at >= as_of - interval '24 hours'
     order by h.created_at desc
     limit greatest(window_size, 1)
  ), stats as (
    select count(*) as samples,
           case when count(latency) >= 3 then pg_catalog.regr_slope(latency, minute) end as latency_slope,
           avg(loss) as loss,
           (pg_catalog.array_agg(battery order by minute desc) filter (where battery is not null))[1]
             as battery_now,
           case when count(battery) >= 3 then pg_catalog.regr_slope(battery, minute) end as battery_slope,
           max(temperature) as temperature_max,
           case when count(temperature) >= 3 then pg_catalog.regr_slope(temperature, minute) end
             as temperature_slope
      from recent
  ), rules as (
    select max(r.worst) filter (where r.name = 'packet_loss') as loss_worst,
           max(r.degraded_at) filter (where r.name = 'battery_percent') as battery_low,
           max(r.best) filter (where r.name = 'temperature_c') as temp_best,
           max(r.worst) filter (where r.name = 'temperature_c') as temp_worst
      from public.health_rules r
  ), signals as (
    select s.samples,
           greatest(0.0, least(1.0, coalesce(s.latency_slope, 0) * 10 / 200)) as latency,
           greatest(0.0, least(1.0, coalesce(s.loss, 0) / nullif(r.loss_worst, 0))) as loss,
           case when s.battery_now is null then 0.0
                else greatest(0.0, least(1.0, 1 - (s.battery_now + least(coalesce(s.battery_slope, 0), 0) * 30)
                                                   / (2 * r.battery_low))) end as battery,
           case when s.temperature_max is null then 0.0
                else flowmesh.metric_score(
                       s.temperature_max + greatest(coalesce(s.temperature_slope, 0), 0) * 10,
                       r.temp_worst, r.temp_best) end as thermal,
           s.latency_slope, s.battery_slope, s.temperature_slope
      from stats s, rules r
  )
  select case when g.samples = 0 then null
              else 1 - (1 - g.latency) * (1 - g.loss) * (1 - g.battery) * (1 - g.thermal) end,
         pg_catalog.jsonb_build_object(
           'samples', g.samples, 'latency', g.latency, 'loss', g.loss, 'battery', g.battery,
           'thermal', g.thermal, 'latency_slope_ms_per_min', g.latency_slope,
           'battery_slope_pct_per_min', g.battery_slope,
           'temperature_slope_c_per_min', g.temperature_slope)
    from signals g
$$;
comment on function public.predict_node_risk(uuid, text, integer, timestamptz) is
  'Predicted failure risk in [0, 1] of one node from its last window_size heartbeats of the 24 hours before as_of (default now(); an earlier as_of gives the risk the model saw then, which the node page charts) (latency trend, packet loss, battery drain, thermal trend; noisy-OR), with the signals that make it up; null risk when it has no heartbeats. Inlinable: no SET clause (a SET stops the planner inlining it into the prediction pass, 12x slower over 2,000 nodes); every name in it is schema-qualified and it runs with the caller''s rights. Example: select risk, signals->>''latency'' from predict_node_risk(''6f1c...''::uuid, ''cam''); -> 0.82 | 0.75';

create or replace function public.run_prediction_pass(window_size integer default 30)
returns table (nodes_scored integer, alerts_opened integer, alerts_resolved integer,
               marked_offline integer)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_threshold double precision;
  v_scored integer;
  v_opened integer;
  v_resolved integer;
  v_offline integer;
begin
  if window_size is null or window_size < 2 then
    raise exception 'window_size must be at least 2, got %', window_size using errcode = '22023';
  end if;
  v_offline := public.record_offline_transitions();
  select r.degraded_at into v_threshold from public.health_rules r where r.name = 'predicted_risk';

  update flowmesh.node_records n
     set predicted_risk = p.risk, predicted_at = now()
    from flowmesh.node_records m
   cross join lateral public.predict_node_risk(m.tetrahedron_id, m.node_id, window_size) p
   where n.tetrahedron_id = m.tetrahedron_id and n.node_id = m.node_id and p.risk is not null;
  get diagnostics v_scored = row_count;

  update public.guardian_alerts a
     set resolved_at = greatest(now(), a.created_at),
         details = a.details || pg_catalog.jsonb_build_object(
           'resolution', 'risk fell below threshold', 'predicted_risk', n.predicted_risk)
    from flowmesh.node_records n
   where a.alert_type = 'node-failure-predicted' and a.resolved_at is null
     and n.tetrahedron_id = a.tetrahedron_id and n.node_id = a.node_id
     and (n.predicted_risk is null or n.predicted_risk < v_threshold);
  get diagnostics v_resolved = row_count;

  insert into public.guardian_alerts (tetrahedron_id, alert_type, node_id, severity, message, details)
  select n.tetrahedron_id, 'node-failure-predicted', n.node_id,
         case when n.predicted_risk >= (1 + v_threshold) / 2 then 'critical' else 'warning' end,
         pg_catalog.format('node %s is predicted to fail (risk %s)', n.node_id,
                           pg_catalog.round(n.predicted_risk::numeric, 2)),
         pg_catalog.jsonb_build_object('predicted_risk', n.predicted_risk, 'threshold', v_threshold,
                                       'window_size', window_size)
    from flowmesh.node_records n
   where n.predicted_risk >= v_threshold
  on conflict (tetrahedron_id, alert_type, node_id) where resolved_at is null do nothing;
  get diagnostics v_opened = row_count;

  return query select v_scored, v_opened, v_resolved, v_offline;
end
$$;
comment on function public.run_prediction_pass(integer) is
  'The prediction pass: log the offline periods no pass has logged yet (record_offline_transitions; marked_offline counts them), compute predicted_risk for every node with heartbeats, open a node-failure-predicted alert for each node at or above health_rules.predicted_risk.degraded_at (once while open), resolve those that fell below. Example: select * from run_prediction_pass(); -> (120, 2, 1, 0)';

revoke all on function flowmesh.number(jsonb), public.predict_node_risk(uuid, text, integer, timestamptz)
  from public, anon;
grant execute on function flowmesh.number(jsonb), public.predict_node_risk(uuid, text, integer, timestamptz)
  to authenticated, service_role;
revoke all on function public.run_prediction_pass(integer) from public, anon, authenticated;
grant execute on function public.run_prediction_pass(integer) to service_role;
