-- The dashboard's named queries (monitors/dashboard/reader.py q()).
-- Every figure comes from the SQL API (sql/0011, sql/0014): the views and
-- functions run with the caller's rights, so row-level security applies.
-- Parameters arrive as text and are cast here, so a malformed one is refused
-- by Postgres with its SQLSTATE (class 22), like any other bad input.

-- name: request_limits
-- Every request's statements end within statement_timeout_ms (57014 past it): one
-- heavy request (a year of heatmap) cannot hold a pooled connection for long.
select pg_catalog.set_config('statement_timeout', %(statement_timeout_ms)s::text, true);

-- name: act_as
-- A JWT request's identity for this transaction only, the way PostgREST sets it.
select pg_catalog.set_config('role', %(role)s, true),
       pg_catalog.set_config('request.jwt.claims', %(claims)s, true);

-- name: fleet
select *
  from public.mesh_summary
 where %(search)s::text is null
    or pg_catalog.strpos(pg_catalog.lower(name), pg_catalog.lower(%(search)s::text)) > 0
 order by name;

-- name: tetrahedron
select * from public.mesh_summary where name = %(name)s::text;

-- name: tetrahedron_nodes
select * from public.nodes where tetrahedron_id = %(id)s order by node_id;

-- name: tetrahedron_links
select * from public.mesh_links where tetrahedron_id = %(id)s order by observer, subject;

-- name: tetrahedron_alerts
-- Open alerts and those of the last 7 days, newest first.
select *
  from public.alert_history
 where tetrahedron_id = %(id)s
   and (resolved_at is null or created_at >= now() - interval '7 days')
 order by created_at desc, id desc
 limit 100;

-- name: tetrahedron_decisions
select *
  from public.guardian_decisions
 where tetrahedron_id = %(id)s
 order by created_at desc, id desc
 limit 50;

-- name: heatmap
-- The bucket (e.g. '5m', '1h', '300') is read as an interval by Postgres;
-- node_health_heatmap refuses one outside its range (22023). Buckets where a
-- node sent nothing have no row.
select h.node_id, h.bucket_start, h.heartbeats, h.health_score, h.min_health_score
  from public.node_health_heatmap(%(id)s, %(bucket)s::interval, %(buckets)s::integer) h
 order by h.bucket_start, h.node_id;

-- name: heatmap_buckets
-- Every bucket node_health_heatmap covers, oldest first, empty ones too (the
-- page draws a column per bucket), as the SQL lists them. Run after heatmap in
-- the same transaction, so both read the same now().
select extract(epoch from %(bucket)s::interval)::double precision as bucket_seconds, b.bucket_start
  from public.heatmap_buckets(%(bucket)s::interval, %(buckets)s::integer) b
 order by b.bucket_start;

-- name: node
select * from public.nodes where tetrahedron_id = %(id)s and node_id = %(node)s::text;

-- name: node_series
select *
  from public.node_metric_series(%(id)s, %(node)s::text, %(window)s::interval, %(buckets)s::integer)
 order by bucket_start;

-- name: node_history
select node_id, status, health_score, since, until
  from public.node_status_timeline
 where tetrahedron_id = %(id)s and node_id = %(node)s::text
 order by since desc, until desc nulls first  -- the current period first, even when two start together
 limit 100;

-- name: node_events
-- What the node observed, and what was observed about it.
select *
  from public.mesh_events
 where tetrahedron_id = %(id)s and (observer = %(node)s::text or subject = %(node)s::text)
 order by observed_at desc, id desc
 limit 100;

-- name: health
select pg_catalog.count(*) as tetrahedrons,
       coalesce(pg_catalog.sum(nodes), 0)::bigint as nodes,
       coalesce(pg_catalog.sum(online), 0)::bigint as online,
       coalesce(pg_catalog.sum(degraded), 0)::bigint as degraded,
       coalesce(pg_catalog.sum(offline), 0)::bigint as offline,
       coalesce(pg_catalog.sum(open_alerts), 0)::bigint as open_alerts
  from public.mesh_summary;

-- name: network_nodes
-- Every visible node (of one tetrahedron when named) with its status, transport and round trip.
select t.name as tetrahedron, n.tetrahedron_id, n.node_id, n.role, n.status, n.health_score,
       n.mesh_status, n.mesh_transport, n.mesh_transport_rtt_ms, n.last_heartbeat_at
  from public.nodes n
  join public.tetrahedrons t on t.id = n.tetrahedron_id
 where %(name)s::text is null or t.name = %(name)s::text
 order by t.name, n.node_id;

-- name: network_links
select t.name as tetrahedron, l.*
  from public.mesh_links l
  join public.tetrahedrons t on t.id = l.tetrahedron_id
 where %(name)s::text is null or t.name = %(name)s::text
 order by t.name, l.observer, l.subject;

-- name: gossip
select * from public.gossip_summary(%(id)s) order by node_id;

-- name: gossip_totals
select coalesce(pg_catalog.sum(seen), 0)::bigint as seen,
       coalesce(pg_catalog.sum(duplicates), 0)::bigint as duplicates,
       coalesce(pg_catalog.sum(propagated), 0)::bigint as propagated
  from public.gossip_summary(%(id)s);

-- name: badge
select name, status from public.mesh_summary where name = %(name)s::text;

-- name: visible_tetrahedrons
-- Which tetrahedrons an identity may see (row-level security decides), for the live stream.
select id, name from public.tetrahedrons;

-- name: listen_changes
listen flowmesh_changes;

-- name: ping
select 1;
