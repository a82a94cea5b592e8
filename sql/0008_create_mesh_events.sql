-- 0008_create_mesh_events.sql
-- What agents observe on the peer mesh: membership changes (joined, suspect,
-- dead, left, recovered), the path each member uses to reach a peer (path:
-- its transport, address and round trip, one event per switch) and alerts
-- received from other members. Agents ship them through their outbox with
-- record_mesh_events, idempotently by (observer, seq). A trigger keeps the
-- node records' mesh_status and mesh_transport current and turns mesh alerts
-- into guardian alerts, opened once however many members report them.

create table if not exists public.mesh_events (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  observer       flowmesh.node_id not null,
  seq            bigint not null,
  kind           text not null,
  subject        flowmesh.node_id not null,
  incarnation    bigint,
  details        jsonb not null default '{}'::jsonb,
  observed_at    timestamptz not null,
  created_at     timestamptz not null default now(),
  constraint mesh_events_pkey primary key (id, tetrahedron_id),
  constraint mesh_events_kind_check
    check (kind in ('joined', 'suspect', 'dead', 'left', 'recovered', 'path', 'alert')),
  constraint mesh_events_details_check check (jsonb_typeof(details) = 'object')
);
comment on table public.mesh_events is
  'Append-only log of what members observed on the peer mesh: membership changes about subject, the path observer switched to for reaching subject (kind path; details: transport, address, previous, rtt_ms), and alerts (subject = the alert''s origin). Unique per tetrahedron, observer and seq.';
create unique index if not exists mesh_events_tetrahedron_id_observer_seq_idx
  on public.mesh_events (tetrahedron_id, observer, seq);
create index if not exists mesh_events_tetrahedron_id_subject_observed_at_idx
  on public.mesh_events (tetrahedron_id, subject, observed_at desc);

alter table public.mesh_events enable row level security;
drop policy if exists mesh_events_select_authenticated on public.mesh_events;
create policy mesh_events_select_authenticated on public.mesh_events
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table public.mesh_events from anon, authenticated, service_role;
grant select on table public.mesh_events to authenticated;
grant all on table public.mesh_events to service_role;

-- who hears whom: one row per (observer, subject), kept by the trigger below,
-- so the mesh map reads one row per edge however long the event log grows
create table if not exists flowmesh.mesh_link_records (
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  observer       flowmesh.node_id not null,
  subject        flowmesh.node_id not null,
  state          text not null,
  state_at       timestamptz not null,
  transport      text,
  address        text,
  rtt_ms         double precision,
  transport_at   timestamptz,
  primary key (tetrahedron_id, observer, subject),
  constraint mesh_link_records_state_check check (state in ('alive', 'suspect', 'dead', 'left'))
);
comment on table flowmesh.mesh_link_records is
  'What each member last observed of each peer: its membership state (from the newest membership event; a path event means alive) and the path it reaches it by (the newest path event). Maintained by flowmesh.apply_mesh_events; read it through public.mesh_links.';
alter table flowmesh.mesh_link_records enable row level security;
drop policy if exists mesh_link_records_select_authenticated on flowmesh.mesh_link_records;
create policy mesh_link_records_select_authenticated on flowmesh.mesh_link_records
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table flowmesh.mesh_link_records from anon, authenticated, service_role;
grant select on table flowmesh.mesh_link_records to authenticated;
grant all on table flowmesh.mesh_link_records to service_role;

create or replace view public.mesh_links with (security_invoker = true) as
select l.tetrahedron_id, l.observer, l.subject, l.state, l.transport, l.address, l.rtt_ms,
       greatest(l.state_at, l.transport_at) as observed_at
  from flowmesh.mesh_link_records l
 where l.state in ('alive', 'suspect');
comment on view public.mesh_links is
  'Who hears whom on the peer mesh now: one row per member (observer) and peer (subject) that the member last saw alive or suspect, with the transport, address and round trip of the path it last switched to (null until it reported one). The edges of the dashboard''s mesh map. Row-level security applies. Example: select observer, subject, transport, rtt_ms from mesh_links where tetrahedron_id = ''6f1c...'';';
revoke all on public.mesh_links from anon, authenticated, service_role;
grant select on public.mesh_links to authenticated, service_role;

-- validation -------------------------------------------------------------------
create or replace function flowmesh.mesh_event_problem(item jsonb) returns text
language sql immutable
set search_path = ''
as $$
  select case
    when pg_catalog.jsonb_typeof(item) is distinct from 'object'
      then '22023 must be a JSON object, got ' || coalesce(pg_catalog.jsonb_typeof(item), 'null')
    when pg_catalog.jsonb_typeof(item -> 'seq') is distinct from 'number'
         or (item ->> 'seq')::numeric <= 0 or (item ->> 'seq')::numeric > 9223372036854775807
         or (item ->> 'seq')::numeric <> pg_catalog.trunc((item ->> 'seq')::numeric)
      then '22023 seq must be a positive integer'
    when item ->> 'kind' is null
         or item ->> 'kind' not in ('joined', 'suspect', 'dead', 'left', 'recovered', 'path', 'alert')
      then '22023 kind must be one of joined, suspect, dead, left, recovered, path, alert'
    when pg_catalog.jsonb_typeof(item -> 'observer') is distinct from 'string'
      then '22023 observer must be a string'
    when flowmesh.node_id_problem(item ->> 'observer', 'observer') is not null
      then flowmesh.node_id_problem(item ->> 'observer', 'observer')
    when pg_catalog.jsonb_typeof(item -> 'subject') is distinct from 'string'
      then '22023 subject must be a string'
    when flowmesh.node_id_problem(item ->> 'subject', 'subject') is not null
      then flowmesh.node_id_problem(item ->> 'subject', 'subject')
    when item ? 'incarnation' and pg_catalog.jsonb_typeof(item -> 'incarnation') is distinct from 'number'
      then '22023 incarnation must be a number'
    when pg_catalog.jsonb_typeof(item -> 'at') is distinct from 'number'
         or (item ->> 'at')::numeric <= 0 or (item ->> 'at')::numeric >= 32503680000
      then '22023 at must be a Unix time in seconds'
    when item ? 'details' and pg_catalog.jsonb_typeof(item -> 'details') is distinct from 'object'
      then '22023 details must be a JSON object'
    -- a path event: how observer now reaches subject. Each test guards its
    -- cast with a nested case: OR does not promise to evaluate left to right
    when item ->> 'kind' = 'path' and pg_catalog.jsonb_typeof(item -> 'details') is distinct from 'object'
      then '22023 details of a path event must be a JSON object with a transport'
    when item ->> 'kind' = 'path'
         and case when pg_catalog.jsonb_typeof(item -> 'details' -> 'transport') = 'string'
                  then item -> 'details' ->> 'transport' !~ '^[a-z][a-z0-9-]{0,15}$'
                  else true end
      then '22023 details.transport must be a transport name: 1 to 16 characters, a lowercase letter then lowercase letters, digits or -'
    when item ->> 'kind' = 'path'
         and case pg_catalog.jsonb_typeof(item -> 'details' -> 'rtt_ms')
               when 'number' then (item -> 'details' ->> 'rtt_ms')::numeric not between 0 and 86400000
               when 'null' then false
               else item -> 'details' ? 'rtt_ms' end
      then '22023 details.rtt_ms must be null or a number of milliseconds from 0 to 86400000'
    when item ->> 'kind' = 'path'
         and case pg_catalog.jsonb_typeof(item -> 'details' -> 'address')
               when 'string' then pg_catalog.length(item -> 'details' ->> 'address') > 300
               when 'null' then false
               else item -> 'details' ? 'address' end
      then '22023 details.address must be null or a string of at most 300 characters'
    when item ->> 'kind' = 'path'
         and case pg_catalog.jsonb_typeof(item -> 'details' -> 'previous')
               when 'string' then pg_catalog.length(item -> 'details' ->> 'previous') > 300
               when 'null' then false
               else item -> 'details' ? 'previous' end
      then '22023 details.previous must be null or a string of at most 300 characters'
    when pg_catalog.pg_column_size(item) > flowmesh.limit_of('payload_max_bytes')
      then '54000 event is ' || pg_catalog.pg_column_size(item) || ' bytes; the limit is '
           || flowmesh.limit_of('payload_max_bytes')
  end
$$;
comment on function flowmesh.mesh_event_problem(jsonb) is
  'Validation rule for one record_mesh_events element: null when acceptable, else the SQLSTATE, a space and the reason. A path element''s details must hold transport (a transport name, [a-z][a-z0-9-]*, 1 to 16 characters) and may hold rtt_ms (null or 0 to 86400000), address and previous (null or at most 300 characters each).';

-- derived state -----------------------------------------------------------------
create or replace function flowmesh.apply_mesh_events() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  -- membership: a path event only says which way a member reaches the subject,
  -- not whether it is a member, so it leaves mesh_status as it was
  insert into flowmesh.node_records as n
         (tetrahedron_id, node_id, mesh_status, mesh_status_at, mesh_reported_by)
  select distinct on (e.tetrahedron_id, e.subject)
         e.tetrahedron_id, e.subject,
         case e.kind when 'suspect' then 'suspect' when 'dead' then 'dead'
                     when 'left' then 'left' else 'alive' end,
         e.observed_at, e.observer
    from new_events e
   where e.kind not in ('alert', 'path')
   order by e.tetrahedron_id, e.subject, e.observed_at desc, e.id desc
  on conflict (tetrahedron_id, node_id) do update
     set mesh_status = excluded.mesh_status,
         mesh_status_at = excluded.mesh_status_at,
         mesh_reported_by = excluded.mesh_reported_by,
         updated_at = now()
   where n.mesh_status_at is null or n.mesh_status_at <= excluded.mesh_status_at;

  -- paths: the newest path event about a subject, whoever observed it, sets
  -- how the mesh reaches it; an older one arriving late never moves it back
  insert into flowmesh.node_records as n
         (tetrahedron_id, node_id, mesh_transport, mesh_transport_at, mesh_transport_rtt_ms,
          mesh_transport_reported_by)
  select distinct on (e.tetrahedron_id, e.subject)
         e.tetrahedron_id, e.subject, e.details ->> 'transport', e.observed_at,
         case when pg_catalog.jsonb_typeof(e.details -> 'rtt_ms') = 'number'
              then (e.details ->> 'rtt_ms')::double precision end,
         e.observer
    from new_events e
   where e.kind = 'path'
   order by e.tetrahedron_id, e.subject, e.observed_at desc, e.id desc
  on conflict (tetrahedron_id, node_id) do update
     set mesh_transport = excluded.mesh_transport,
         mesh_transport_at = excluded.mesh_transport_at,
         mesh_transport_rtt_ms = excluded.mesh_transport_rtt_ms,
         mesh_transport_reported_by = excluded.mesh_transport_reported_by,
         updated_at = now()
   where n.mesh_transport_at is null or n.mesh_transport_at <= excluded.mesh_transport_at;

  -- each member's view of each peer, only forward in time: membership events
  -- set its state, path events its path (and that it hears the peer)
  insert into flowmesh.mesh_link_records as l
         (tetrahedron_id, observer, subject, state, state_at, transport, address, rtt_ms, transport_at)
  select distinct on (e.tetrahedron_id, e.observer, e.subject)
         e.tetrahedron_id, e.observer, e.subject,
         case e.kind when 'suspect' then 'suspect' when 'dead' then 'dead'
                     when 'left' then 'left' else 'alive' end,
         e.observed_at, p.details ->> 'transport', p.details ->> 'address',
         case when pg_catalog.jsonb_typeof(p.details -> 'rtt_ms') = 'number'
              then (p.details ->> 'rtt_ms')::double precision end,
         p.observed_at
    from new_events e
    left join lateral (select q.details, q.observed_at from new_events q
                        where q.tetrahedron_id = e.tetrahedron_id and q.observer = e.observer
                          and q.subject = e.subject and q.kind = 'path'
                        order by q.observed_at desc, q.id desc limit 1) p on true
   where e.kind <> 'alert' and e.observer <> e.subject
   order by e.tetrahedron_id, e.observer, e.subject, e.observed_at desc, e.id desc
  on conflict (tetrahedron_id, observer, subject) do update
     set state = case when excluded.state_at >= l.state_at then excluded.state else l.state end,
         state_at = greatest(l.state_at, excluded.state_at),
         transport = case when excluded.transport_at >= l.transport_at or l.transport_at is null
                          then coalesce(excluded.transport, l.transport) else l.transport end,
         address = case when excluded.transport_at >= l.transport_at or l.transport_at is null
                        then coalesce(excluded.address, l.address) else l.address end,
         rtt_ms = case when excluded.transport_at >= l.transport_at or l.transport_at is null
                       then case when excluded.transport_at is null then l.rtt_ms else excluded.rtt_ms end
                       else l.rtt_ms end,
         transport_at = greatest(l.transport_at, excluded.transport_at);

  insert into public.guardian_alerts (tetrahedron_id, alert_type, node_id, severity, message, details)
  select distinct on (e.tetrahedron_id, e.details -> 'alert' ->> 'type', e.subject)
         e.tetrahedron_id,
         'mesh-' || coalesce(nullif(e.details -> 'alert' ->> 'type', ''), 'alert'),
         e.subject,
         case when e.details ->> 'priority' = 'critical' then 'critical' else 'warning' end,
         pg_catalog.format('mesh alert from %s: %s', e.subject,
                           coalesce(e.details -> 'alert' ->> 'type', 'alert')),
         e.details || pg_catalog.jsonb_build_object('reported_by', e.observer)
    from new_events e
   where e.kind = 'alert'
   order by e.tetrahedron_id, e.details -> 'alert' ->> 'type', e.subject, e.observed_at
  on conflict (tetrahedron_id, alert_type, node_id) where resolved_at is null do nothing;
  return null;
end
$$;
comment on function flowmesh.apply_mesh_events() is
  'Trigger: after mesh events are inserted, set each subject''s mesh_status (flowmesh.node_records, read through public.nodes) from the newest membership event, its mesh_transport, mesh_transport_at, mesh_transport_rtt_ms and mesh_transport_reported_by from the newest path event (path events leave mesh_status alone), each only forward in time; keep each member''s view of each peer (flowmesh.mesh_link_records, read through public.mesh_links: state from its membership events, path from its path events); and open a mesh-<type> guardian alert for each alert (once while open).';
revoke all on function flowmesh.apply_mesh_events() from public, anon, authenticated;

create or replace trigger mesh_events_apply
  after insert on public.mesh_events
  referencing new table as new_events
  for each statement execute function flowmesh.apply_mesh_events();

-- RPC ------------------------------------------------------------------------------
create or replace function public.record_mesh_events(t_uuid uuid, batch jsonb)
returns table (received integer, inserted integer, duplicates integer)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_received integer;
  v_inserted integer;
begin
  -- the whole batch is refused if any element's observer is a node the caller may not write as
  perform flowmesh.authorize_writer(t_uuid, flowmesh.batch_writers(batch, 'observer'));
  v_received := flowmesh.check_batch(batch, 'events', 'flowmesh.mesh_event_problem');

  insert into public.mesh_events
         (tetrahedron_id, observer, seq, kind, subject, incarnation, details, observed_at)
  select t_uuid, i.item ->> 'observer', (i.item ->> 'seq')::bigint, i.item ->> 'kind',
         i.item ->> 'subject', (i.item ->> 'incarnation')::numeric::bigint,
         coalesce(i.item -> 'details', '{}'::jsonb),
         least(pg_catalog.to_timestamp((i.item ->> 'at')::double precision), now())
    from pg_catalog.jsonb_array_elements(batch) as i(item)
  on conflict (tetrahedron_id, observer, seq) do nothing;
  get diagnostics v_inserted = row_count;
  return query select v_received, v_inserted, v_received - v_inserted;
end
$$;
comment on function public.record_mesh_events(uuid, jsonb) is
  'Record what members observed on the mesh, atomically and idempotently by (observer, seq). batch is a JSON array of {"observer", "seq", "kind": joined|suspect|dead|left|recovered|path|alert, "subject", "incarnation"?, "at": Unix seconds, "details"?: object}. A path event (observer now reaches subject this way) needs "details": {"transport", "address"?, "previous"?, "rtt_ms"?}. Membership events update the subjects'' mesh_status, path events their mesh_transport (public.nodes); alerts open mesh-<type> guardian alerts. Example: select * from record_mesh_events(''6f1c...''::uuid, ''[{"observer": "pi", "seq": 1, "kind": "dead", "subject": "cam", "at": 1763740000}]'') -> (1, 1, 0).';

revoke all on function flowmesh.mesh_event_problem(jsonb) from public, anon;
grant execute on function flowmesh.mesh_event_problem(jsonb) to authenticated, service_role;
revoke all on function public.record_mesh_events(uuid, jsonb) from public, anon;
grant execute on function public.record_mesh_events(uuid, jsonb) to authenticated, service_role;
