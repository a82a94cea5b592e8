-- 0006_create_health_scoring.sql
-- Health in SQL (seed 000's weighted heuristic). Every rule is a row of
-- health_rules: a measure, its weight in the score, the values that score 1
-- and 0 (linear between, clamped), and the value past which a node is
-- degraded. Change a row and the next heartbeat is scored by it; no code
-- changes. The heartbeat trigger now scores each node and sets its status;
-- status changes are logged in node_status_history for history and replay.

create table if not exists public.health_rules (
  name        text primary key,
  weight      double precision not null default 0,
  best        double precision not null,
  worst       double precision not null,
  degraded_at double precision,
  description text not null,
  constraint health_rules_weight_check check (weight >= 0),
  constraint health_rules_range_check check (best <> worst)
);
comment on table public.health_rules is
  'Health scoring and thresholds, one row per rule. A metric row scores metrics->>name linearly from worst (0) to best (1), weighted by weight; past degraded_at (in the worst direction) the node is degraded. Rows health_score and predicted_risk hold the thresholds for the score itself (degraded below) and for failure-prediction alerts (at or above).';

insert into public.health_rules (name, weight, best, worst, degraded_at, description) values
  ('latency_ms',      0.25,  20, 500, 250,  'Round-trip latency to peers, ms.'),
  ('packet_loss',     0.25,   0, 0.2, 0.1,  'Share of datagrams lost, 0 to 1.'),
  ('cpu_percent',     0.15,  50, 100, 95,   'CPU use, percent.'),
  ('temperature_c',   0.15,  50,  90, 80,   'Hottest sensor, degrees Celsius.'),
  ('battery_percent', 0.20,  50,   0, 15,   'Battery charge, percent (absent on mains power).'),
  ('health_score',    0,      1,   0, 0.6,  'Threshold: a node whose score falls below degraded_at is degraded.'),
  ('predicted_risk',  0,      0,   1, 0.7,  'Threshold: a node whose predicted risk reaches degraded_at gets a node-failure-predicted alert.')
on conflict (name) do nothing;

alter table public.health_rules enable row level security;
drop policy if exists health_rules_select_authenticated on public.health_rules;
create policy health_rules_select_authenticated on public.health_rules
  for select to authenticated using ((select auth.uid()) is not null);
revoke all on table public.health_rules from anon, authenticated, service_role;
grant select on table public.health_rules to authenticated;
grant all on table public.health_rules to service_role;

alter table public.tetrahedrons add column if not exists node_timeout_seconds integer not null default 300;
alter table public.tetrahedrons drop constraint if exists tetrahedrons_node_timeout_seconds_check;
alter table public.tetrahedrons add constraint tetrahedrons_node_timeout_seconds_check
  check (node_timeout_seconds > 0);
comment on column public.tetrahedrons.node_timeout_seconds is
  'A node of this tetrahedron with no heartbeat for longer than this is offline.';

alter table public.nodes add column if not exists status_changed_at timestamptz;
alter table public.nodes alter column status_changed_at set default now();
alter table public.nodes add column if not exists predicted_at timestamptz;
comment on column public.nodes.status_changed_at is 'When status last changed.';
comment on column public.nodes.predicted_at is 'When predicted_risk was last computed.';

create table if not exists public.node_status_history (
  id             bigint generated always as identity primary key,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  node_id        text not null,
  status         text not null,
  previous       text,
  health_score   double precision,
  changed_at     timestamptz not null default now()
);
comment on table public.node_status_history is
  'Every change of a node''s status (online, degraded, offline), with the score at the time: history and replay.';
create index if not exists node_status_history_tetrahedron_id_node_id_changed_at_idx
  on public.node_status_history (tetrahedron_id, node_id, changed_at desc);
alter table public.node_status_history enable row level security;
drop policy if exists node_status_history_select_authenticated on public.node_status_history;
create policy node_status_history_select_authenticated on public.node_status_history
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table public.node_status_history from anon, authenticated, service_role;
grant select on table public.node_status_history to authenticated;
grant all on table public.node_status_history to service_role;

-- the rules -------------------------------------------------------------------
create or replace function flowmesh.metric_score(value double precision, best double precision,
                                                 worst double precision)
returns double precision
language sql immutable
as $$
  select greatest(0.0, least(1.0, (value - worst) / (best - worst)))
$$;
comment on function flowmesh.metric_score(double precision, double precision, double precision) is
  'One metric''s score: 1 at best, 0 at worst, linear between, clamped to [0, 1]. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified.';

create or replace function public.health_score(metrics jsonb) returns double precision
language sql stable
set search_path = ''
as $$
  select sum(r.weight * flowmesh.metric_score((metrics ->> r.name)::double precision, r.best, r.worst))
         / nullif(sum(r.weight), 0)
    from public.health_rules r
   where r.weight > 0 and pg_catalog.jsonb_typeof(metrics -> r.name) = 'number'
$$;
comment on function public.health_score(jsonb) is
  'Weighted health score in [0, 1] of a metrics object under health_rules, over the metrics present; null when none is scored. Example: select health_score(''{"latency_ms": 28, "packet_loss": 0.02, "cpu_percent": 23, "battery_percent": 82}'') -> 0.97';

create or replace function public.health_problems(metrics jsonb) returns text[]
language sql stable
set search_path = ''
as $$
  select coalesce(pg_catalog.array_agg(r.name order by r.name), '{}')
    from public.health_rules r
   where r.degraded_at is not null and r.weight > 0
     and pg_catalog.jsonb_typeof(metrics -> r.name) = 'number'
     and case when r.worst > r.best then (metrics ->> r.name)::double precision >= r.degraded_at
              else (metrics ->> r.name)::double precision <= r.degraded_at end
$$;
comment on function public.health_problems(jsonb) is
  'The metrics past their degraded_at threshold under health_rules (empty when none). Example: select health_problems(''{"battery_percent": 9}'') -> {battery_percent}';

create or replace function flowmesh.health_status(metrics jsonb) returns text
language sql stable
set search_path = ''
as $$
  select case
    when pg_catalog.cardinality(public.health_problems(metrics)) > 0 then 'degraded'
    when public.health_score(metrics) < (select r.degraded_at from public.health_rules r
                                          where r.name = 'health_score') then 'degraded'
    else 'online'
  end
$$;
comment on function flowmesh.health_status(jsonb) is
  'online or degraded for a node that just sent these metrics: degraded when a metric is past its threshold or the score is below health_score.degraded_at.';

-- heartbeats score nodes ------------------------------------------------------------
create or replace function flowmesh.apply_heartbeats() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  -- times are capped at now() for every writer: a future timestamp must not
  -- keep a tetrahedron or node looking alive
  update public.tetrahedrons t
     set last_heartbeat_at = l.latest
    from (select h.tetrahedron_id, least(max(h.created_at), now()) as latest
            from new_heartbeats h
           group by h.tetrahedron_id) l
   where t.id = l.tetrahedron_id
     and (t.last_heartbeat_at is null or t.last_heartbeat_at < l.latest);

  insert into public.nodes as n
         (tetrahedron_id, node_id, role, metrics, last_seq, last_heartbeat_at, health_score, status)
  select l.tetrahedron_id, l.source, l.role, l.metrics, l.seq, l.at,
         public.health_score(l.metrics), flowmesh.health_status(l.metrics)
    from (select distinct on (h.tetrahedron_id, h.source)
                 h.tetrahedron_id, h.source, h.payload ->> 'role' as role,
                 case when pg_catalog.jsonb_typeof(h.payload -> 'metrics') = 'object'
                      then h.payload -> 'metrics' else '{}'::jsonb end as metrics,
                 h.seq, least(h.created_at, now()) as at
            from new_heartbeats h
           order by h.tetrahedron_id, h.source, h.created_at desc, h.seq desc nulls last) l
  on conflict (tetrahedron_id, node_id) do update
     set last_heartbeat_at = excluded.last_heartbeat_at,
         metrics = case when excluded.metrics = '{}'::jsonb then n.metrics else excluded.metrics end,
         role = coalesce(excluded.role, n.role),
         last_seq = greatest(n.last_seq, excluded.last_seq),
         health_score = case when excluded.metrics = '{}'::jsonb then n.health_score
                             else excluded.health_score end,
         status = case when excluded.metrics = '{}'::jsonb and n.status = 'degraded' then 'degraded'
                       else excluded.status end,
         updated_at = now()
   where n.last_heartbeat_at is null or n.last_heartbeat_at <= excluded.last_heartbeat_at;
  return null;
end
$$;
comment on function flowmesh.apply_heartbeats() is
  'Trigger: after heartbeats are inserted, advance tetrahedrons.last_heartbeat_at and upsert each source''s nodes row: latest metrics, role, last_seq, health score and status (online or degraded) under health_rules.';

-- status history --------------------------------------------------------------------
-- An upsert fires BEFORE INSERT triggers even when it ends as an update, so a
-- new node is logged AFTER INSERT, and a change BEFORE UPDATE (which also stamps it).
create or replace function flowmesh.record_status_change() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  if tg_op = 'UPDATE' then
    new.status_changed_at := now();
  end if;
  insert into public.node_status_history (tetrahedron_id, node_id, status, previous, health_score)
  values (new.tetrahedron_id, new.node_id, new.status,
          case when tg_op = 'UPDATE' then old.status end, new.health_score);
  return new;
end
$$;
comment on function flowmesh.record_status_change() is
  'Trigger: log a node''s first status and every change in node_status_history, stamping nodes.status_changed_at.';
revoke all on function flowmesh.record_status_change() from public, anon, authenticated;

drop trigger if exists nodes_status_insert on public.nodes;
create trigger nodes_status_insert
  after insert on public.nodes
  for each row execute function flowmesh.record_status_change();
create or replace trigger nodes_status_update
  before update of status on public.nodes
  for each row when (old.status is distinct from new.status)
  execute function flowmesh.record_status_change();

-- offline: silence longer than the tetrahedron's timeout ----------------------------------
create or replace function public.mark_offline_nodes() returns integer
language plpgsql security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  update public.nodes n
     set status = 'offline', updated_at = now()
    from public.tetrahedrons t
   where t.id = n.tetrahedron_id
     and n.status <> 'offline'
     and coalesce(n.last_heartbeat_at, n.created_at)
         < now() - pg_catalog.make_interval(secs => t.node_timeout_seconds);
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
comment on function public.mark_offline_nodes() is
  'Mark offline every node silent for longer than its tetrahedron''s node_timeout_seconds (or never heard from since registration); returns how many changed. Run by the prediction pass and the schedules. Example: select mark_offline_nodes(); -> 3';

revoke all on function flowmesh.metric_score(double precision, double precision, double precision),
  public.health_score(jsonb), public.health_problems(jsonb), flowmesh.health_status(jsonb)
  from public, anon;
grant execute on function flowmesh.metric_score(double precision, double precision, double precision),
  public.health_score(jsonb), public.health_problems(jsonb), flowmesh.health_status(jsonb)
  to authenticated, service_role;
revoke all on function public.mark_offline_nodes() from public, anon, authenticated;
grant execute on function public.mark_offline_nodes() to service_role;
