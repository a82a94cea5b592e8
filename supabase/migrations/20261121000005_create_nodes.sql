-- 0005_create_nodes.sql
-- Nodes (one row per device), their health and the status rule.
--
-- Health: every rule is a row of health_rules: a measure, its weight in the
-- score, the values that score 1 and 0 (linear between, clamped), and the
-- value past which a node is degraded. Change a row and the next heartbeat is
-- scored by it; no code changes. A node's health_status (online or degraded)
-- is that of its latest heartbeat's metrics.
--
-- Status, defined once: a node is offline once silent past its tetrahedron's
-- node_timeout_seconds, else its health_status. The stored row keeps
-- offline_at (last heartbeat, or registration, plus the timeout), recomputed
-- by trigger whenever either input changes; flowmesh.node_status compares it
-- with now() when read. public.nodes is the stored row plus that status, as of
-- now, and every reader reads it: there is no stored status to go stale.
--
-- History: node_status_history logs each change with the time it happened.
-- An offline period starts at offline_at whether or not anything ran then: the
-- scheduled pass logs it (record_offline_transitions), the heartbeat trigger
-- logs it when a silent node comes back before any pass did, and
-- node_status_timeline shows it while it lasts.

-- health rules ------------------------------------------------------------------
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
-- the rules are the same for every tetrahedron: any vertex may read them
create policy health_rules_select_authenticated on public.health_rules
  for select to authenticated
  using ((select exists (select from flowmesh.member_tetrahedron_ids())));
revoke all on table public.health_rules from anon, authenticated, service_role;
grant select on table public.health_rules to authenticated;
grant all on table public.health_rules to service_role;

create or replace function flowmesh.metric_score(value double precision, best double precision,
                                                 worst double precision)
returns double precision
language sql immutable
as $$
  select greatest(0.0, least(1.0, (value - worst) / (best - worst)))
$$;
comment on function flowmesh.metric_score(double precision, double precision, double precision) is
  'One metric''s score: 1 at best, 0 at worst, linear between, clamped to [0, 1]. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified.';

-- The health rule, written once: the score, the metrics past their thresholds
-- and the status they give, in one pass over health_rules. Inlinable (a
-- set-returning SQL function with no SET clause, used in FROM), so the
-- heartbeat trigger plans it into its own statement instead of calling a
-- function per heartbeat; the three functions after it read it.
create or replace function flowmesh.health(metrics jsonb)
returns table (score double precision, problems text[], status text)
language sql stable
as $$
  select h.score, h.problems,
         case when pg_catalog.cardinality(h.problems) > 0 or h.score < h.degraded_below
              then 'degraded' else 'online' end
    from (select sum(r.weight * flowmesh.metric_score((metrics ->> r.name)::double precision,
                                                      r.best, r.worst))
                   filter (where r.weight > 0
                             and pg_catalog.jsonb_typeof(metrics -> r.name) = 'number')
                 / nullif(sum(r.weight) filter (where r.weight > 0
                                                  and pg_catalog.jsonb_typeof(metrics -> r.name) = 'number'),
                          0) as score,
                 coalesce(pg_catalog.array_agg(r.name order by r.name)
                            filter (where r.degraded_at is not null and r.weight > 0
                                      and pg_catalog.jsonb_typeof(metrics -> r.name) = 'number'
                                      and case when r.worst > r.best
                                               then (metrics ->> r.name)::double precision >= r.degraded_at
                                               else (metrics ->> r.name)::double precision <= r.degraded_at
                                          end),
                          '{}') as problems,
                 max(r.degraded_at) filter (where r.name = 'health_score') as degraded_below
            from public.health_rules r) h
$$;
comment on function flowmesh.health(jsonb) is
  'The health rule for a metrics object under health_rules, in one row: score, the weighted score in [0, 1] over the metrics present (null when none is scored); problems, the metrics past their degraded_at threshold (empty when none); status, online or degraded for a node that just sent these metrics (degraded when a metric is past its threshold or the score is below health_score.degraded_at). Inlinable in FROM: no SET clause (it would stop the planner inlining it), every name schema-qualified. Example: select status from flowmesh.health(''{"battery_percent": 9}''); -> degraded';

create or replace function public.health_score(metrics jsonb) returns double precision
language sql stable
set search_path = ''
as $$
  select h.score from flowmesh.health(metrics) h
$$;
comment on function public.health_score(jsonb) is
  'Weighted health score in [0, 1] of a metrics object under health_rules, over the metrics present; null when none is scored (flowmesh.health). Example: select health_score(''{"latency_ms": 28, "packet_loss": 0.02, "cpu_percent": 23, "battery_percent": 82}'') -> 0.97';

create or replace function public.health_problems(metrics jsonb) returns text[]
language sql stable
set search_path = ''
as $$
  select h.problems from flowmesh.health(metrics) h
$$;
comment on function public.health_problems(jsonb) is
  'The metrics past their degraded_at threshold under health_rules (empty when none; flowmesh.health). Example: select health_problems(''{"battery_percent": 9}'') -> {battery_percent}';

create or replace function flowmesh.health_status(metrics jsonb) returns text
language sql stable
set search_path = ''
as $$
  select h.status from flowmesh.health(metrics) h
$$;
comment on function flowmesh.health_status(jsonb) is
  'The health rule: online or degraded for a node that just sent these metrics; degraded when a metric is past its threshold or the score is below health_score.degraded_at (flowmesh.health).';

-- nodes ---------------------------------------------------------------------------
create table if not exists flowmesh.node_records (
  tetrahedron_id      uuid not null references public.tetrahedrons (id) on delete cascade,
  node_id             flowmesh.node_id not null,
  role                text,
  health_status       text not null default 'online',
  health_status_since timestamptz not null default now(),
  health_score        double precision,
  metrics             jsonb not null default '{}'::jsonb,
  last_seq            bigint,
  last_heartbeat_at   timestamptz,
  offline_at          timestamptz not null,
  predicted_risk      double precision,
  predicted_at        timestamptz,
  mesh_status         text,
  mesh_status_at      timestamptz,
  mesh_reported_by    flowmesh.node_id,
  mesh_transport      text,
  mesh_transport_at   timestamptz,
  mesh_transport_rtt_ms double precision,
  mesh_transport_reported_by flowmesh.node_id,
  state               jsonb not null default '{}'::jsonb,
  state_version       bigint not null default 0,
  created_at          timestamptz not null default now(),
  updated_at          timestamptz not null default now(),
  primary key (tetrahedron_id, node_id),
  constraint node_records_health_status_check check (health_status in ('online', 'degraded')),
  constraint node_records_health_score_check check (health_score between 0 and 1),
  constraint node_records_predicted_risk_check check (predicted_risk between 0 and 1),
  constraint node_records_mesh_status_check check (mesh_status in ('alive', 'suspect', 'dead', 'left'))
);
comment on table flowmesh.node_records is
  'What is stored about each node; read it through public.nodes, which adds the status as of now. Maintained by triggers: heartbeats set role, metrics, health, last_seq and last_heartbeat_at; mesh events set mesh_status and mesh_transport; the prediction pass sets predicted_risk; offline_at follows last_heartbeat_at and the tetrahedron''s node_timeout_seconds.';
comment on column flowmesh.node_records.health_status is
  'online or degraded: the health rule (flowmesh.health_status) applied to the latest heartbeat''s metrics. Never offline: that depends on the time it is read (see public.nodes).';
comment on column flowmesh.node_records.health_status_since is
  'When health_status last changed, or the node last came back from being offline, whichever is later.';
comment on column flowmesh.node_records.last_seq is
  'Sequence number of the newest heartbeat received from this node through the batched RPC.';
comment on column flowmesh.node_records.offline_at is
  'When the node goes offline unless heard from again: last heartbeat (or registration) plus its tetrahedron''s node_timeout_seconds. Set by trigger.';
comment on column flowmesh.node_records.mesh_status is
  'The node''s state as the peer mesh last reported it (alive, suspect, dead, left); null when no member has reported on it.';
comment on column flowmesh.node_records.mesh_status_at is 'When the mesh observed mesh_status.';
comment on column flowmesh.node_records.mesh_reported_by is 'The member whose observation set mesh_status.';
comment on column flowmesh.node_records.mesh_transport is
  'How the peer mesh last reported reaching this node: the transport (udp, ws, relay, ble, ...) of the newest path event about it, from whichever member; null when none has reported a path. Each member''s own path is in mesh_events (kind path).';
comment on column flowmesh.node_records.mesh_transport_at is 'When the mesh observed mesh_transport (the path switch).';
comment on column flowmesh.node_records.mesh_transport_rtt_ms is
  'The round trip in milliseconds over mesh_transport that the path event reported; null when it reported none.';
comment on column flowmesh.node_records.mesh_transport_reported_by is 'The member whose path event set mesh_transport.';

alter table flowmesh.node_records enable row level security;
drop policy if exists node_records_select_authenticated on flowmesh.node_records;
create policy node_records_select_authenticated on flowmesh.node_records
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table flowmesh.node_records from anon, authenticated, service_role;
grant select on table flowmesh.node_records to authenticated;
grant all on table flowmesh.node_records to service_role;

create table if not exists public.node_status_history (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null,
  node_id        flowmesh.node_id not null,
  status         text not null,
  previous       text,
  health_score   double precision,
  changed_at     timestamptz not null default now(),
  constraint node_status_history_pkey primary key (id, tetrahedron_id),
  constraint node_status_history_node_fkey foreign key (tetrahedron_id, node_id)
    references flowmesh.node_records (tetrahedron_id, node_id) on delete cascade,
  constraint node_status_history_status_check check (status in ('online', 'degraded', 'offline')),
  constraint node_status_history_previous_check check (previous in ('online', 'degraded', 'offline'))
);
comment on table public.node_status_history is
  'Every change of a node''s status (online, degraded, offline) at the time it happened, with the score at the time: history and replay. Offline periods start at the last heartbeat plus the timeout; node_status_timeline adds the current one while no pass has logged it.';
create index if not exists node_status_history_tetrahedron_id_node_id_changed_at_idx
  on public.node_status_history (tetrahedron_id, node_id, changed_at desc);
-- an offline period is logged once, whether the pass or the heartbeat trigger gets there first
create unique index if not exists node_status_history_offline_idx
  on public.node_status_history (tetrahedron_id, node_id, changed_at) where status = 'offline';
alter table public.node_status_history enable row level security;
drop policy if exists node_status_history_select_authenticated on public.node_status_history;
create policy node_status_history_select_authenticated on public.node_status_history
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table public.node_status_history from anon, authenticated, service_role;
grant select on table public.node_status_history to authenticated;
grant all on table public.node_status_history to service_role;

-- the status rule --------------------------------------------------------------------
create or replace function flowmesh.offline_since(offline_at timestamptz) returns timestamptz
language sql stable
as $$
  select case when offline_at < pg_catalog.now() then offline_at end
$$;
comment on function flowmesh.offline_since(timestamptz) is
  'The silence rule: when the node went offline if it is offline now (its offline_at has passed), else null. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified. Example: select flowmesh.offline_since(now() - interval ''1 minute'') is not null; -> true';

create or replace function flowmesh.node_status(health_status text, offline_at timestamptz) returns text
language sql stable
as $$
  select case when flowmesh.offline_since(offline_at) is null then health_status else 'offline' end
$$;
comment on function flowmesh.node_status(text, timestamptz) is
  'The status rule: a node''s status as of now, offline once its offline_at has passed, else its health_status (online or degraded). Every reader gets it through public.nodes. Inlinable: no SET clause, every name schema-qualified. Example: select flowmesh.node_status(''degraded'', now() + interval ''5 minutes''); -> degraded';

create or replace function flowmesh.set_offline_at() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  new.offline_at := coalesce(new.last_heartbeat_at, new.created_at)
    + pg_catalog.make_interval(secs => (select t.node_timeout_seconds from public.tetrahedrons t
                                         where t.id = new.tetrahedron_id));
  return new;
end
$$;
comment on function flowmesh.set_offline_at() is
  'Trigger: compute node_records.offline_at, the last heartbeat (or registration) plus the tetrahedron''s node_timeout_seconds, whenever a row is inserted or one of those inputs changes.';

create or replace trigger node_records_offline_at
  before insert or update of tetrahedron_id, last_heartbeat_at, created_at, offline_at
  on flowmesh.node_records
  for each row execute function flowmesh.set_offline_at();

create or replace function flowmesh.apply_node_timeout() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  -- touching offline_at makes set_offline_at recompute it with the new timeout
  update flowmesh.node_records n set offline_at = null where n.tetrahedron_id = new.id;
  return null;
end
$$;
comment on function flowmesh.apply_node_timeout() is
  'Trigger: when a tetrahedron''s node_timeout_seconds changes, recompute offline_at for its nodes (in the same transaction, so no reader sees the old one). Offline periods already logged keep their times.';

create or replace trigger tetrahedrons_node_timeout_apply
  after update of node_timeout_seconds on public.tetrahedrons
  for each row when (old.node_timeout_seconds is distinct from new.node_timeout_seconds)
  execute function flowmesh.apply_node_timeout();

create or replace function flowmesh.record_first_status() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  insert into public.node_status_history (tetrahedron_id, node_id, status, health_score, changed_at)
  values (new.tetrahedron_id, new.node_id, new.health_status, new.health_score,
          coalesce(new.last_heartbeat_at, new.created_at));
  return null;
end
$$;
comment on function flowmesh.record_first_status() is
  'Trigger: log a new node''s first status in node_status_history, at its first heartbeat or its registration. Later changes are logged by flowmesh.apply_heartbeats and record_offline_transitions.';

create or replace trigger node_records_first_status
  after insert on flowmesh.node_records
  for each row execute function flowmesh.record_first_status();

revoke all on function flowmesh.set_offline_at(), flowmesh.apply_node_timeout(),
  flowmesh.record_first_status() from public, anon, authenticated;

-- what every reader reads ------------------------------------------------------------------
create or replace view public.nodes with (security_invoker = true) as
select n.tetrahedron_id, n.node_id, n.role,
       flowmesh.node_status(n.health_status, n.offline_at) as status,
       coalesce(flowmesh.offline_since(n.offline_at), n.health_status_since) as status_since,
       n.health_status, n.health_score, n.predicted_risk, n.predicted_at, n.metrics,
       n.state, n.state_version, n.last_seq, n.last_heartbeat_at, n.offline_at,
       n.mesh_status, n.mesh_status_at, n.mesh_reported_by, n.mesh_transport, n.mesh_transport_at,
       n.mesh_transport_rtt_ms, n.mesh_transport_reported_by, n.created_at, n.updated_at
  from flowmesh.node_records n;
comment on view public.nodes is
  'One row per device: role, status as of now (online, degraded, or offline once silent past its tetrahedron''s node_timeout_seconds) and since when, health score, predicted risk, latest metrics, the mesh''s view of it (mesh_status, and mesh_transport: how a member last reached it, e.g. alive but on the relay) and versioned state. Every FlowMesh reader reads nodes here. Row-level security applies (security_invoker); plain columns can be written through it by service_role.';
comment on column public.nodes.status is
  'online, degraded or offline as of now: flowmesh.node_status(health_status, offline_at).';
comment on column public.nodes.status_since is
  'When the current status began: offline_at for an offline node, else health_status_since.';

create or replace view flowmesh.unlogged_offline_periods with (security_invoker = true) as
select n.tetrahedron_id, n.node_id, n.status, n.health_status as previous, n.health_score,
       n.status_since as changed_at
  from public.nodes n
 where n.status = 'offline'
   -- one index probe per offline node, whatever the statistics say: a scalar
   -- subquery, not an anti-join the planner may turn into a nested loop over
   -- every offline row just after a burst of nodes went offline
   and (select h.changed_at from public.node_status_history h
         where h.tetrahedron_id = n.tetrahedron_id and h.node_id = n.node_id
           and h.status = 'offline'
           and h.changed_at > coalesce(n.last_heartbeat_at, n.created_at)
         limit 1) is null;
comment on view flowmesh.unlogged_offline_periods is
  'Nodes offline now whose offline period node_status_history does not hold yet, shaped as the history row that would log it. record_offline_transitions logs them; node_status_timeline shows them meanwhile.';

revoke all on public.nodes, flowmesh.unlogged_offline_periods from anon, authenticated, service_role;
grant select on public.nodes, flowmesh.unlogged_offline_periods to authenticated, service_role;
grant insert, update, delete on public.nodes to service_role;

create or replace function public.record_offline_transitions() returns integer
language sql security definer
set search_path = ''
as $$
  with logged as (
    insert into public.node_status_history (tetrahedron_id, node_id, status, previous, health_score, changed_at)
    select u.tetrahedron_id, u.node_id, u.status, u.previous, u.health_score, u.changed_at
      from flowmesh.unlogged_offline_periods u
    on conflict (tetrahedron_id, node_id, changed_at) where status = 'offline' do nothing
    returning 1
  ), opened as (
    -- a device that went silent is an alarm of its own, open until it is heard from
    insert into public.guardian_alerts (tetrahedron_id, alert_type, node_id, severity, message, details)
    select n.tetrahedron_id, 'node-offline', n.node_id, 'warning',
           pg_catalog.format('%s is offline: no heartbeat for more than %s s', n.node_id,
                             t.node_timeout_seconds),
           pg_catalog.jsonb_build_object('offline_since', n.offline_at,
                                         'last_heartbeat_at', n.last_heartbeat_at)
      from flowmesh.node_records n
      join public.tetrahedrons t on t.id = n.tetrahedron_id
     where flowmesh.node_status(n.health_status, n.offline_at) = 'offline'
       and not exists (select 1 from public.guardian_alerts a
                        where a.tetrahedron_id = n.tetrahedron_id and a.alert_type = 'node-offline'
                          and a.node_id = n.node_id and a.resolved_at is null)
    on conflict (tetrahedron_id, alert_type, node_id) where resolved_at is null do nothing
  ), resolved as (
    update public.guardian_alerts a
       set resolved_at = greatest(now(), a.created_at)
      from flowmesh.node_records n
     where a.alert_type = 'node-offline' and a.resolved_at is null
       and n.tetrahedron_id = a.tetrahedron_id and n.node_id = a.node_id
       and flowmesh.node_status(n.health_status, n.offline_at) <> 'offline'
  )
  select count(*)::integer from logged
$$;
comment on function public.record_offline_transitions() is
  'Log in node_status_history every node that is offline now and not logged yet, at the time it went offline (its last heartbeat plus the timeout), not the time this runs; returns how many. Opens a node-offline guardian alert (warning) for each node offline now, once while open, and resolves those of nodes heard from again. Idempotent. Run by the prediction pass and the schedules. Example: select record_offline_transitions(); -> 3';

revoke all on function flowmesh.metric_score(double precision, double precision, double precision),
  flowmesh.health(jsonb), public.health_score(jsonb), public.health_problems(jsonb), flowmesh.health_status(jsonb),
  flowmesh.offline_since(timestamptz), flowmesh.node_status(text, timestamptz)
  from public, anon;
grant execute on function flowmesh.metric_score(double precision, double precision, double precision),
  flowmesh.health(jsonb), public.health_score(jsonb), public.health_problems(jsonb), flowmesh.health_status(jsonb),
  flowmesh.offline_since(timestamptz), flowmesh.node_status(text, timestamptz)
  to authenticated, service_role;
revoke all on function public.record_offline_transitions() from public, anon, authenticated;
grant execute on function public.record_offline_transitions() to service_role;
