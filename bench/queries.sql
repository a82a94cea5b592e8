-- The benchmarks' statements, loaded by name (flowmesh.queries.named), like
-- flowmesh/queries.sql. Each block starts with "-- name: <name>".

-- name: server_version
show server_version;

-- name: heartbeat_count
select count(*) from mesh_heartbeats;

-- name: heartbeats_since
-- a fleet step's rows: heartbeats sampled from its start (a backlog an
-- earlier step left in the outboxes is older, and not counted)
select count(*) from mesh_heartbeats where created_at >= to_timestamp(%(since)s);

-- Ingest (bench/ingest.py) ---------------------------------------------------

-- name: register_bench_node
select register_node('bench', 'node-00');

-- name: truncate_heartbeats
truncate mesh_heartbeats;

-- name: forget_last_heartbeats
update tetrahedrons set last_heartbeat_at = null;

-- name: delete_nodes
delete from nodes;

-- name: vacuum_heartbeats
vacuum analyze mesh_heartbeats;

-- name: copy_heartbeats
-- The baseline: raw COPY into the same table (the same trigger fires).
copy mesh_heartbeats (tetrahedron_id, source, seq, created_at, payload) from stdin;

-- name: record_batch
select * from record_mesh_heartbeats(%s, %s::jsonb);

-- name: insert_heartbeat
-- The baseline of single writes: a plain INSERT, one per transaction.
insert into mesh_heartbeats (tetrahedron_id, source, payload) values (%s, %s, %s::jsonb);

-- name: record_one
select record_mesh_heartbeat(%s, %s, %s::jsonb);

-- Server CPU per heartbeat (bench/heartbeat_cost.py) ---------------------------

-- name: register_device
select register_node(%s, %s);

-- name: backend_pid
select pg_backend_pid();

-- name: insert_device_heartbeat
-- The baseline: the row the RPC would insert, by a plain INSERT (the same trigger fires).
insert into mesh_heartbeats (tetrahedron_id, source, seq, payload, created_at)
values (%s, %s, %s, %s::jsonb, to_timestamp(%s));

-- name: track_pl_functions
set track_functions = 'pl';

-- name: function_times
select schemaname || '.' || funcname, calls, total_time, self_time
  from pg_stat_user_functions;

-- name: flush_stats
select pg_stat_force_next_flush();

-- name: clear_stats_snapshot
select pg_stat_clear_snapshot();

-- Fleet-scale check and prediction (bench/check.py) ----------------------------

-- name: fill_heartbeats
-- Heartbeats first..last of every node, spread over span_s seconds up to now.
insert into mesh_heartbeats (tetrahedron_id, source, seq, created_at, payload)
select n.tetrahedron_id, n.node_id, g,
       now() - make_interval(secs => (%(span_s)s * (1 - g::float8 / %(per_node)s))),
       jsonb_build_object('metrics', jsonb_build_object(
         'latency_ms', 20 + (g %% 7), 'packet_loss', (g %% 5) / 500.0,
         'cpu_percent', 20 + (g %% 30), 'battery_percent', 90 - (g %% 40)))
  from (select tetrahedron_id, node_id from nodes order by node_id) n,
       generate_series(%(first)s::int, %(last)s::int) g;

-- name: delete_alerts
delete from guardian_alerts;

-- name: vacuum_check_tables
vacuum analyze guardian_alerts, tetrahedrons;

-- name: vacuum_all
vacuum analyze;

-- name: check_all
select * from check_mesh_heartbeats_and_alert(60);

-- name: prediction_pass
select * from run_prediction_pass();

-- name: keep_forty_days
select maintain_heartbeat_partitions('40 days');

-- name: ensure_partition_days_ago
select flowmesh.ensure_heartbeat_partition((now() at time zone 'UTC')::date - %s::int);

-- name: fill_tetrahedrons
-- n tetrahedrons, one in every `every` silent for three hours, the rest heard from in the last half hour.
insert into tetrahedrons (name, last_heartbeat_at)
select 't' || lpad(g::text, 7, '0'),
       case when g %% %(every)s = 0 then now() - interval '3 hours'
            else now() - make_interval(mins => g %% 30) end
  from generate_series(1, %(n)s) g;

-- name: fill_nodes
insert into nodes (tetrahedron_id, node_id, last_heartbeat_at)
select id, 'node-' || name, last_heartbeat_at from tetrahedrons order by name limit %s;

-- name: fill_vertices
insert into tetrahedron_vertices (tetrahedron_id, node_id)
select tetrahedron_id, node_id from nodes;

-- name: heartbeat_trigger_off
-- Bulk history: the trigger's derived state is set by the fill, not per row.
alter table mesh_heartbeats disable trigger mesh_heartbeats_apply;

-- name: heartbeat_trigger_on
alter table mesh_heartbeats enable trigger mesh_heartbeats_apply;

-- name: stale_count
select count(*) from stale_tetrahedrons(60);

-- name: plan_check
explain (analyze, buffers, costs off)
select t.id from tetrahedrons t where flowmesh.is_stale(t.last_heartbeat_at, 60);

-- name: any_node
select tetrahedron_id, node_id from nodes limit 1;

-- name: plan_predict
-- One node's prediction window, bounded in time as predict_node_risk bounds it.
explain (analyze, buffers, costs off)
select * from mesh_heartbeats h
 where h.tetrahedron_id = %s and h.source = %s and h.created_at >= now() - interval '24 hours'
 order by h.created_at desc limit 30;

-- Fleet (bench/fleet.py) ----------------------------------------------------------

-- name: alter_system
-- {name} and {value} are composed with psycopg.sql (ALTER SYSTEM takes no parameters).
alter system set {name} = {value};

-- name: reload_conf
select pg_reload_conf();

-- name: xact_commits
-- Transactions committed in this database since the statistics began.
select xact_commit from pg_stat_database where datname = current_database();

-- name: wal_flushes
-- WAL flushes (fsyncs) by every process of the server since the statistics began.
select coalesce(sum(fsyncs), 0)::bigint from pg_stat_io where object = 'wal';

-- Dashboard (bench/dashboard.py) ---------------------------------------------------

-- name: fill_fleet_nodes
-- per_tetrahedron nodes in every tetrahedron, named n00, n01, ...
insert into nodes (tetrahedron_id, node_id, last_heartbeat_at)
select t.id, 'n' || lpad(g::text, 2, '0'), t.last_heartbeat_at
  from tetrahedrons t, generate_series(0, %(per_tetrahedron)s - 1) g;

-- name: heartbeat_triggers_off
-- Bulk history: no derived state and no notification per fill statement.
alter table mesh_heartbeats disable trigger user;

-- name: heartbeat_triggers_on
alter table mesh_heartbeats enable trigger user;

-- name: latest_heartbeat_each_node
-- One heartbeat per node with the triggers on: nodes get metrics and health from it.
insert into mesh_heartbeats (tetrahedron_id, source, seq, created_at, payload)
select n.tetrahedron_id, n.node_id, 1000000,
       -- the silent tetrahedrons stay silent; the others were heard in the last 4 minutes
       case when n.last_heartbeat_at < now() - interval '1 hour' then n.last_heartbeat_at
            else now() - make_interval(secs => abs(hashtext(n.node_id::text || n.tetrahedron_id::text)) %% 240)
       end,
       jsonb_build_object('metrics', jsonb_build_object(
         'latency_ms', 20 + (abs(hashtext(n.node_id::text || n.tetrahedron_id::text)) %% 400),
         'packet_loss', 0.01, 'cpu_percent', 35, 'battery_percent', 80),
         'mesh', jsonb_build_object('gossip', jsonb_build_object('seen', 40, 'duplicates', 12, 'propagated', 28)))
  from nodes n;

-- name: fill_mesh_links
-- Every node of a tetrahedron reports a path to every other one (the trigger keeps mesh_links).
insert into mesh_events (tetrahedron_id, observer, seq, kind, subject, details, observed_at)
select a.tetrahedron_id, a.node_id, row_number() over (partition by a.tetrahedron_id, a.node_id),
       'path', b.node_id, jsonb_build_object('transport', 'udp', 'rtt_ms', 1.5), now()
  from nodes a join nodes b on b.tetrahedron_id = a.tetrahedron_id and b.node_id <> a.node_id;

-- name: fleet_tetrahedron_names
select name from tetrahedrons order by name;

-- name: sql_fleet
-- What the overview shows, straight from SQL: the baseline of its server time.
select * from mesh_summary order by name;

-- name: sql_tetrahedron
-- What a tetrahedron's page shows, straight from SQL.
select (select count(*) from nodes where tetrahedron_id = t.id),
       (select count(*) from mesh_links where tetrahedron_id = t.id),
       (select count(*) from (select * from alert_history where tetrahedron_id = t.id
                               order by created_at desc limit 100) a),
       (select count(*) from node_health_heatmap(t.id, '5 minutes', 40))
  from tetrahedrons t where t.name = %s;

-- name: bench_heartbeat
select record_mesh_heartbeat(id, 'n00', '{"metrics": {"latency_ms": 30}}') from tetrahedrons where name = %s;

-- name: listen_changes
listen flowmesh_changes;

-- Hash registry (bench/registry.py) --------------------------------------------------

-- name: pgvector_version
select extversion from pg_extension where extname = 'vector';

-- name: register_registry_node
select register_node('bench-registry', %s);

-- name: registry_hnsw_indexes
-- The HNSW indexes on hash_registry: dropped for the bulk load, built after it.
select c.relname
  from pg_index i
  join pg_class c on c.oid = i.indexrelid
  join pg_am a on a.oid = c.relam
 where i.indrelid = 'public.hash_registry'::regclass and a.amname = 'hnsw';

-- name: drop_index
-- {name} is composed with psycopg.sql.
drop index public.{name};

-- name: truncate_registry
truncate hash_registry;

-- name: registry_count
select count(*) from hash_registry;

-- name: vacuum_registry
vacuum analyze hash_registry;

-- name: copy_registry
-- The baseline: raw COPY of the rows register_hashes writes, into the same table.
copy hash_registry (tetrahedron_id, hash, data_type, node_id, embedding, confidence, metadata, version)
from stdin;

-- name: register_hashes
select * from register_hashes(%s, %s::jsonb);

-- name: set_maintenance_work_mem
-- The graph of an HNSW build must fit in maintenance_work_mem, or the build slows down a lot.
select set_config('maintenance_work_mem', %s, false);

-- name: parallel_maintenance_workers
show max_parallel_maintenance_workers;

-- name: create_hnsw_index
-- {m} and {ef_construction} are composed with psycopg.sql (CREATE INDEX takes no parameters).
create index hash_registry_embedding_bench_idx on public.hash_registry
 using hnsw (embedding extensions.vector_cosine_ops) with (m = {m}, ef_construction = {ef_construction});

-- name: hnsw_index_size
select pg_relation_size('public.hash_registry_embedding_bench_idx');

-- name: hnsw_index_scans
select idx_scan from pg_stat_user_indexes where indexrelname = 'hash_registry_embedding_bench_idx';

-- name: no_index_scan
-- Exact search: the planner may not use an index scan for the rest of the transaction.
select set_config('enable_indexscan', 'off', true);

-- name: exact_neighbours
-- Exact search, the ground truth: search_hashes' query, run with index scans off.
select hash from hash_registry
 where tetrahedron_id = %(t)s and (%(data_type)s::text is null or data_type = %(data_type)s)
 order by embedding operator(extensions.<=>) %(embedding)s::extensions.vector
 limit %(k)s;

-- name: explain_exact_neighbours
explain (costs off)
select hash from hash_registry
 where tetrahedron_id = %(t)s and (%(data_type)s::text is null or data_type = %(data_type)s)
 order by embedding operator(extensions.<=>) %(embedding)s::extensions.vector
 limit %(k)s;

-- name: index_neighbours
-- search_hashes' query as a plain statement, so hnsw.iterative_scan is the session's
-- (search_hashes turns iterative scans on for itself): what a filter does without them.
select hash, (embedding operator(extensions.<=>) %(embedding)s::extensions.vector)::float8 from hash_registry
 where tetrahedron_id = %(t)s and (%(data_type)s::text is null or data_type = %(data_type)s)
 order by embedding operator(extensions.<=>) %(embedding)s::extensions.vector
 limit %(k)s;

-- name: set_ef_search
select set_config('hnsw.ef_search', %s, false);

-- name: set_iterative_scan
select set_config('hnsw.iterative_scan', %s, false);

-- name: search_hashes
select hash, distance from search_hashes(%(t)s, %(embedding)s::extensions.vector, %(k)s, %(data_type)s);
