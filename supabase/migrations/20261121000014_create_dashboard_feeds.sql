-- 0014_create_dashboard_feeds.sql
-- What the dashboard reads beyond the analyst views, and how it learns that
-- something changed: a heatmap of each node's health over time, one node's
-- metrics and predicted risk over a window, the members' gossip counters, and
-- a notification on the channel flowmesh_changes after every write that
-- changes what a page shows. Every figure is computed here, with the caller's
-- rights, so the dashboard, its JSON API and an analyst get the same answer.

-- time buckets ------------------------------------------------------------------
-- how many buckets one request may ask for: the rule the heatmap and the series share
create or replace function flowmesh.buckets_problem(buckets integer) returns text
language sql immutable
as $$
  select case
    when buckets is null or buckets < 1 or buckets > flowmesh.limit_of('series_max_buckets')
      then '22023 buckets is ' || coalesce(buckets::text, 'null') || '; it must be between 1 and '
           || flowmesh.limit_of('series_max_buckets')::text
  end
$$;
comment on function flowmesh.buckets_problem(integer) is
  'Validation rule for a count of time buckets: null when 1 to series_max_buckets (flowmesh.limits()), else the SQLSTATE, a space and the reason. Inlinable: no SET clause. Example: select flowmesh.buckets_problem(0); -> 22023 buckets is 0; it must be between 1 and 1000';

create or replace function flowmesh.bucket_problem(bucket interval, buckets integer) returns text
language sql immutable
as $$
  select case
    when bucket is null or buckets is null then '22004 bucket and buckets must not be null'
    when bucket < interval '1 minute' or bucket > interval '1 day'
      then '22023 bucket is ' || bucket::text || '; it must be between 1 minute and 1 day'
    else flowmesh.buckets_problem(buckets)
  end
$$;
comment on function flowmesh.bucket_problem(interval, integer) is
  'Validation rule for a time series request: null when bucket (1 minute to 1 day) and buckets (1 to series_max_buckets of flowmesh.limits()) are acceptable, else the SQLSTATE, a space and the reason (raised by flowmesh.raise_problem). Inlinable: no SET clause. Example: select flowmesh.bucket_problem(''2 days'', 40); -> 22023 bucket is 2 days; it must be between 1 minute and 1 day';

create or replace function public.heatmap_buckets(bucket interval default '5 minutes',
                                                  buckets integer default 40)
returns table (bucket_start timestamptz)
language plpgsql stable
set search_path = ''
as $$
begin
  perform flowmesh.raise_problem(flowmesh.bucket_problem(bucket, buckets));
  -- aligned on the Unix epoch, so two readers asking at different moments see
  -- the same buckets; the newest holds now()
  return query
    select pg_catalog.date_bin(bucket, now(), timestamptz '1970-01-01 00:00:00+00') - bucket * g.i
      from pg_catalog.generate_series(buckets - 1, 0, -1) as g(i);
end
$$;
comment on function public.heatmap_buckets(interval, integer) is
  'The starts of the last buckets time buckets of length bucket (1 minute to 1 day), oldest first, aligned on the Unix epoch, the newest holding now(): the columns of node_health_heatmap, empty ones included. 22023 for a bucket or count out of range. Example: select * from heatmap_buckets(''1 hour'', 3);';

-- heatmap -------------------------------------------------------------------------
create or replace function public.node_health_heatmap(t_uuid uuid, bucket interval default '5 minutes',
                                                      buckets integer default 40)
returns table (node_id text, bucket_start timestamptz, heartbeats bigint, health_score double precision,
               min_health_score double precision)
language plpgsql stable
set search_path = ''
as $$
declare
  v_from timestamptz;
begin
  select min(b.bucket_start) into v_from from public.heatmap_buckets(bucket, buckets) b;
  return query
    select h.source::text,
           pg_catalog.date_bin(bucket, h.created_at, timestamptz '1970-01-01 00:00:00+00'),
           count(*), avg(x.score), min(x.score)
      from public.mesh_heartbeats h
     cross join lateral flowmesh.health(case when pg_catalog.jsonb_typeof(h.payload -> 'metrics') = 'object'
                                             then h.payload -> 'metrics' else '{}'::jsonb end) x
     where h.tetrahedron_id = t_uuid and h.created_at >= v_from and h.created_at <= now()
     group by 1, 2
     order by 1, 2;
end
$$;
comment on function public.node_health_heatmap(uuid, interval, integer) is
  'Each node''s health over time: for each of the last buckets buckets of length bucket (1 minute to 1 day, aligned on the epoch: heatmap_buckets lists them) in which a node sent heartbeats, how many it sent and their average and lowest health score (flowmesh.health of each heartbeat''s metrics). Buckets with no heartbeat are left out. Row-level security applies. 22023 for a bucket or count out of range. Example: select node_id, bucket_start, health_score from node_health_heatmap(''6f1c...''::uuid, ''1 hour'', 24);';

-- one node over time ------------------------------------------------------------
create or replace function public.node_metric_series(t_uuid uuid, node text, since interval default '1 hour',
                                                     buckets integer default 60)
returns table (bucket_start timestamptz, heartbeats bigint, latency_ms double precision,
               packet_loss double precision, cpu_percent double precision,
               battery_percent double precision, temperature_c double precision,
               health_score double precision, predicted_risk double precision)
language plpgsql stable
set search_path = ''
as $$
declare
  v_bucket interval;
  v_from timestamptz;
begin
  if since is null or since < interval '1 minute' or since > interval '400 days' then
    perform flowmesh.raise_problem('22023 since is ' || coalesce(since::text, 'null')
                                   || '; it must be between 1 minute and 400 days');
  end if;
  perform flowmesh.raise_problem(flowmesh.buckets_problem(buckets));
  -- whole seconds, at least one minute: windows divide into readable buckets
  v_bucket := greatest(interval '1 minute',
                       pg_catalog.make_interval(secs => ceil(extract(epoch from since) / buckets)));
  v_from := now() - since;
  return query
    with beats as (
      select pg_catalog.date_bin(v_bucket, h.created_at, timestamptz '1970-01-01 00:00:00+00') as b,
             h.created_at, h.payload -> 'metrics' as m
        from public.mesh_heartbeats h
       where h.tetrahedron_id = t_uuid and h.source = node
         and h.created_at >= v_from and h.created_at <= now()
    ), cells as (
      select b.b, count(*) as n, max(b.created_at) as last_at,
             avg(flowmesh.number(b.m -> 'latency_ms')) as latency,
             avg(flowmesh.number(b.m -> 'packet_loss')) as loss,
             avg(flowmesh.number(b.m -> 'cpu_percent')) as cpu,
             avg(flowmesh.number(b.m -> 'battery_percent')) as battery,
             avg(flowmesh.number(b.m -> 'temperature_c')) as temperature,
             avg(x.score) as score
        from beats b
       cross join lateral flowmesh.health(case when pg_catalog.jsonb_typeof(b.m) = 'object'
                                               then b.m else '{}'::jsonb end) x
       group by b.b
    )
    -- the risk the prediction model gave at each bucket's last heartbeat:
    -- the same rule the prediction pass stores, evaluated as of then
    select c.b, c.n, c.latency, c.loss, c.cpu, c.battery, c.temperature, c.score, r.risk
      from cells c
      left join lateral public.predict_node_risk(t_uuid, node, 30, c.last_at) r on true
     order by c.b;
end
$$;
comment on function public.node_metric_series(uuid, text, interval, integer) is
  'One node over the last since (1 minute to 400 days) in about buckets buckets (of at least a minute): per bucket with heartbeats, their count, the average latency_ms, packet_loss, cpu_percent, battery_percent, temperature_c and health score, and the predicted risk as of the bucket''s last heartbeat (predict_node_risk with its default window). Row-level security applies. 22023 for an argument out of range. Example: select bucket_start, health_score, predicted_risk from node_metric_series(''6f1c...''::uuid, ''cam'', ''6 hours'', 72);';

-- gossip --------------------------------------------------------------------------
create or replace function public.gossip_summary(t_uuid uuid)
returns table (node_id text, seen bigint, duplicates bigint, propagated bigint, reported_at timestamptz)
language sql stable
set search_path = ''
as $$
  -- each node's counters as its newest heartbeat reported them (payload.mesh.gossip)
  select n.node_id::text,
         -- device-supplied: a counter that is not a number reads as null, never an error
         pg_catalog.trunc(flowmesh.number(g.payload -> 'mesh' -> 'gossip' -> 'seen'))::bigint,
         pg_catalog.trunc(flowmesh.number(g.payload -> 'mesh' -> 'gossip' -> 'duplicates'))::bigint,
         pg_catalog.trunc(flowmesh.number(g.payload -> 'mesh' -> 'gossip' -> 'propagated'))::bigint,
         g.created_at
    from flowmesh.node_records n
    join lateral (select h.payload, h.created_at
                    from public.mesh_heartbeats h
                   where h.tetrahedron_id = n.tetrahedron_id and h.source = n.node_id
                     and h.created_at >= n.last_heartbeat_at
                     and pg_catalog.jsonb_typeof(h.payload -> 'mesh' -> 'gossip') = 'object'
                   order by h.created_at desc
                   limit 1) g on true
   where n.tetrahedron_id = t_uuid
   order by 1
$$;
comment on function public.gossip_summary(uuid) is
  'The gossip counters each member of a tetrahedron reported in its newest heartbeat (payload.mesh.gossip: messages seen, duplicates dropped, propagated to peers; a counter that is not a JSON number is null); nodes whose newest heartbeat has none are left out. Row-level security applies. Example: select node_id, seen, duplicates, propagated from gossip_summary(''6f1c...''::uuid);';

-- change notifications ----------------------------------------------------------
create or replace function flowmesh.notify_changes() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_ids uuid[];
begin
  select pg_catalog.array_agg(distinct c.tetrahedron_id) into v_ids from changed c;
  if v_ids is null then
    return null;
  end if;
  -- one notification per statement; past 100 tetrahedrons (a payload near
  -- NOTIFY's 8,000-byte limit) the list is left out: listeners refresh everything
  perform pg_catalog.pg_notify('flowmesh_changes', pg_catalog.jsonb_build_object(
    'kind', tg_argv[0],
    'tetrahedrons', case when pg_catalog.cardinality(v_ids) <= 100 then pg_catalog.to_jsonb(v_ids) end)::text);
  return null;
end
$$;
comment on function flowmesh.notify_changes() is
  'Trigger: after a statement writes rows of a table the dashboard shows, notify channel flowmesh_changes with {"kind": the trigger''s argument (heartbeat, status, alert, mesh_event), "tetrahedrons": the ids the rows belong to, or null past 100}. Postgres delivers it at commit, only if the transaction commits. Example: listen flowmesh_changes;';
revoke all on function flowmesh.notify_changes() from public, anon, authenticated;

create or replace trigger mesh_heartbeats_notify
  after insert on public.mesh_heartbeats
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('heartbeat');
create or replace trigger node_status_history_notify
  after insert on public.node_status_history
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('status');
create or replace trigger guardian_alerts_insert_notify
  after insert on public.guardian_alerts
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('alert');
create or replace trigger guardian_alerts_update_notify
  after update on public.guardian_alerts
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('alert');
create or replace trigger guardian_decisions_insert_notify
  after insert on public.guardian_decisions
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('decision');
create or replace trigger guardian_decisions_update_notify
  after update on public.guardian_decisions
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('decision');
create or replace trigger mesh_events_notify
  after insert on public.mesh_events
  referencing new table as changed
  for each statement execute function flowmesh.notify_changes('mesh_event');

-- privileges ----------------------------------------------------------------------
revoke all on function public.heatmap_buckets(interval, integer), public.node_health_heatmap(uuid, interval, integer),
  public.node_metric_series(uuid, text, interval, integer), public.gossip_summary(uuid)
  from public, anon;
grant execute on function public.heatmap_buckets(interval, integer), public.node_health_heatmap(uuid, interval, integer),
  public.node_metric_series(uuid, text, interval, integer), public.gossip_summary(uuid)
  to authenticated, service_role;
