-- 0006_create_heartbeat_functions.sql
-- The heartbeat write path: record_mesh_heartbeat (one heartbeat, the public
-- contract's signature), record_mesh_heartbeats (idempotent batches for
-- agents), register_node, and the trigger that keeps
-- tetrahedrons.last_heartbeat_at, the node records and their status history
-- current whichever way a heartbeat arrives (RPC, direct insert, COPY).
--
-- Who may write is one rule, flowmesh.authorize_writer, which every write RPC
-- (these, and record_mesh_events) calls before it writes anything:
--   privileged roles (superuser, bypassrls, service_role, the tables' owner)
--     write anywhere;
--   a device (a member of the flowmesh_device group, see 0013) writes only to
--     the tetrahedron of its credential and only as its own node; request.jwt.claims
--     is ignored for it, since a direct connection may set it to anything;
--   an authenticated user (auth.uid()) writes only to tetrahedrons they are a
--     vertex of, and only as the nodes they own there (register_node also lets
--     them create a tetrahedron, or add a new node of theirs to one);
--   nobody else writes.
--
-- Errors the RPCs raise (SQLSTATE):
--   22004 a required argument is null       22023 an argument has the wrong shape
--   54000 payload or batch over its limit   23503 the tetrahedron does not exist
--   42501 the caller may not write to that tetrahedron, or as that node

-- who is calling -----------------------------------------------------------
-- Inside a security definer function current_user is the owner; the caller is
-- the role set with SET ROLE (as PostgREST does), else the session user.
create or replace function flowmesh.caller() returns name
language sql stable
as $$
  select case pg_catalog.current_setting('role')
           when 'none' then session_user
           else pg_catalog.current_setting('role')::name
         end
$$;
comment on function flowmesh.caller() is
  'The role that called into a security definer function: the SET ROLE role, else the session user. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified. Example: select flowmesh.caller(); -> postgres';

create or replace function flowmesh.caller_is_privileged() returns boolean
language sql stable
set search_path = ''
as $$
  select exists (
           select from pg_catalog.pg_roles r
            where r.rolname = flowmesh.caller() and (r.rolsuper or r.rolbypassrls))
      or pg_catalog.pg_has_role(flowmesh.caller(), 'service_role', 'member')
      or pg_catalog.pg_has_role(
           flowmesh.caller(),
           (select c.relowner from pg_catalog.pg_class c
             where c.oid = 'public.mesh_heartbeats'::pg_catalog.regclass),
           'member')
$$;
comment on function flowmesh.caller_is_privileged() is
  'True when the caller is a superuser, bypasses RLS, is (a member of) service_role, or owns the FlowMesh tables.';

create or replace function flowmesh.caller_is_device() returns boolean
language sql stable
set search_path = ''
as $$
  -- by membership, not by credential: a role that got the RPCs through the
  -- group (a device, the group itself after SET ROLE) is a device, credential
  -- or not, and never reaches the JWT rule
  select exists (select from pg_catalog.pg_roles g
                  where g.rolname = 'flowmesh_device'
                    and pg_catalog.pg_has_role(flowmesh.caller(), g.oid, 'usage'))
$$;
comment on function flowmesh.caller_is_device() is
  'True when the caller has the privileges of the flowmesh_device group (0013): a device credential, whose only rule is flowmesh.device_credentials. Example: select flowmesh.caller_is_device(); -> false (as an operator)';

-- flowmesh.device_credentials is created in 0013 (with the group role); this
-- body reads it when it runs, as every plpgsql body resolves its tables
create or replace function flowmesh.authorize_writer(
  t_uuid uuid, node_ids text[], registering boolean default false)
returns void
language plpgsql security definer
set search_path = ''
as $$
declare
  v_caller name := flowmesh.caller();
  v_uid uuid;
  v_device record;
  v_other text;
begin
  if t_uuid is null and not registering then
    raise exception 'tetrahedron id must not be null'
      using errcode = '22004';
  end if;

  if flowmesh.caller_is_privileged() then
    if t_uuid is not null and not exists (select from public.tetrahedrons t where t.id = t_uuid) then
      raise exception 'tetrahedron % does not exist', t_uuid
        using errcode = '23503',
              hint = 'Register the node first (register_node) or create the tetrahedron.';
    end if;
    return;
  end if;

  if flowmesh.caller_is_device() then
    select c.tetrahedron_id, c.node_id::text as node_id into v_device
      from flowmesh.device_credentials c where c.role_name = v_caller;
    if not found then
      raise exception 'permission denied: % is a device role without a device credential', v_caller
        using errcode = '42501';
    end if;
    if t_uuid is distinct from v_device.tetrahedron_id then
      raise exception 'permission denied: % is the credential of node % of tetrahedron %, not of tetrahedron %',
        v_caller, v_device.node_id, v_device.tetrahedron_id, coalesce(t_uuid::text, '(a new one)')
        using errcode = '42501';
    end if;
    select n into v_other from pg_catalog.unnest(node_ids) n
     where n is distinct from v_device.node_id and n is not null limit 1;
    if found then
      raise exception 'permission denied: % is the credential of node %; it may not write as %',
        v_caller, v_device.node_id, v_other
        using errcode = '42501';
    end if;
    -- last used, to the minute: one small write a minute per device at most
    update flowmesh.device_credentials c set last_used_at = now()
     where c.tetrahedron_id = v_device.tetrahedron_id and c.role_name = v_caller
       and (c.last_used_at is null or c.last_used_at <= now() - interval '1 minute');
    return;
  end if;

  v_uid := (select auth.uid());
  if t_uuid is null then  -- registering into a tetrahedron that does not exist yet
    if v_uid is null then
      raise exception 'permission denied: registering a node needs an authenticated user or service_role'
        using errcode = '42501';
    end if;
    return;  -- the caller's node becomes its first vertex
  end if;
  if v_uid is null or not exists (select from flowmesh.owned_vertices() o
                                   where o.tetrahedron_id = t_uuid) then
    raise exception 'permission denied: % is not a vertex of tetrahedron %',
      coalesce(v_uid::text, v_caller::text), t_uuid
      using errcode = '42501';
  end if;
  -- as its own nodes only; registering may also name a node not yet a vertex
  select n into v_other from pg_catalog.unnest(node_ids) n
   where n is not null
     and not exists (select from flowmesh.owned_vertices() o
                      where o.tetrahedron_id = t_uuid and o.node_id = n)
     and (not registering or exists (select from public.tetrahedron_vertices v
                                      where v.tetrahedron_id = t_uuid and v.node_id = n))
   limit 1;
  if found then
    raise exception 'permission denied: % does not own node % of tetrahedron %', v_uid, v_other, t_uuid
      using errcode = '42501';
  end if;
end
$$;
comment on function flowmesh.authorize_writer(uuid, text[], boolean) is
  'The write rule every write RPC calls first: raises unless the caller may write to tetrahedron t_uuid as each of node_ids (nulls are skipped; validation reports them). Privileged roles write anywhere (23503 for an unknown id). A device credential (flowmesh_device, 0013) writes only to its own tetrahedron as its own node, and its last_used_at is updated (at most once a minute). An authenticated user writes only as the nodes they own in a tetrahedron they are a vertex of (flowmesh.owned_vertices). registering (register_node): t_uuid null means a tetrahedron to create, which users may and devices may not, and a user may name a node that is not a vertex yet. Everything else: 42501. Example: select flowmesh.authorize_writer(''6f1c...''::uuid, array[''pi'']);';

create or replace function flowmesh.batch_writers(batch jsonb, field text) returns text[]
language sql immutable
set search_path = ''
as $$
  -- defensive about shape: validation comes after authorization and reports it
  select coalesce(pg_catalog.array_agg(distinct i.item ->> field), '{}')
    from pg_catalog.jsonb_array_elements(
           case when pg_catalog.jsonb_typeof(batch) = 'array' then batch else '[]' end) as i(item)
   where pg_catalog.jsonb_typeof(i.item) = 'object' and i.item ->> field is not null
$$;
comment on function flowmesh.batch_writers(jsonb, text) is
  'The distinct values of field (src, observer) across a batch''s elements: the nodes a batch writes as, for flowmesh.authorize_writer. Malformed batches give what can be read (validation reports the rest). Example: select flowmesh.batch_writers(''[{"src": "pi"}, {"src": "pi"}]'', ''src''); -> {pi}';

-- validation: one rule for the single and the batched RPC --------------------
-- Returns null when the heartbeat is acceptable, else 'SQLSTATE message'.
-- Both rules are inlinable (no SET clause, every name schema-qualified): the
-- planner folds them into the statement that validates, so checking a
-- heartbeat costs an expression, not a function call.
create or replace function flowmesh.heartbeat_problem(src text, payload jsonb) returns text
language sql stable
as $$
  select coalesce(flowmesh.node_id_problem(src, 'src'), case
    when payload is null then '22004 payload must not be null'
    when pg_catalog.jsonb_typeof(payload) <> 'object'
      then '22023 payload must be a JSON object, got ' || pg_catalog.jsonb_typeof(payload)
    when pg_catalog.pg_column_size(payload) > flowmesh.limit_of('payload_max_bytes')
      then '54000 payload is ' || pg_catalog.pg_column_size(payload) || ' bytes; the limit is '
           || flowmesh.limit_of('payload_max_bytes')
  end)
$$;
comment on function flowmesh.heartbeat_problem(text, jsonb) is
  'Validation rule for one heartbeat: null when acceptable, else the SQLSTATE, a space and the reason. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified. Example: select flowmesh.heartbeat_problem(''pi'', ''[]''); -> 22023 payload must be a JSON object, got array';

create or replace function flowmesh.batch_item_problem(item jsonb) returns text
language sql stable
as $$
  select case
    when pg_catalog.jsonb_typeof(item) is distinct from 'object'
      then '22023 must be a JSON object with src, seq, at and payload, got ' || coalesce(pg_catalog.jsonb_typeof(item), 'null')
    when pg_catalog.jsonb_typeof(item -> 'seq') is distinct from 'number'
      then '22023 seq must be a positive integer, got ' || coalesce(pg_catalog.jsonb_typeof(item -> 'seq'), 'nothing')
    when (item ->> 'seq')::numeric <= 0 or (item ->> 'seq')::numeric > 9223372036854775807
         or (item ->> 'seq')::numeric <> pg_catalog.trunc((item ->> 'seq')::numeric)
      then '22023 seq must be a positive integer, got ' || (item ->> 'seq')
    when pg_catalog.jsonb_typeof(item -> 'at') is distinct from 'number'
      then '22023 at must be a Unix time in seconds, got ' || coalesce(pg_catalog.jsonb_typeof(item -> 'at'), 'nothing')
    when (item ->> 'at')::numeric <= 0 or (item ->> 'at')::numeric >= 32503680000
      then '22023 at must be a Unix time in seconds, got ' || (item ->> 'at')
    when (item ->> 'at')::numeric > extract(epoch from now()) + flowmesh.limit_of('clock_ahead_max_s')
      then '22023 at is ' || pg_catalog.round((item ->> 'at')::numeric - extract(epoch from now()))
           || ' s ahead of the server clock; the limit is ' || flowmesh.limit_of('clock_ahead_max_s')
           || ' s (fix the device clock)'
    when item ? 'src' and pg_catalog.jsonb_typeof(item -> 'src') is distinct from 'string'
      then '22023 src must be a string, got ' || pg_catalog.jsonb_typeof(item -> 'src')
    else flowmesh.heartbeat_problem(item ->> 'src', item -> 'payload')
  end
$$;
comment on function flowmesh.batch_item_problem(jsonb) is
  'Validation rule for one element of a record_mesh_heartbeats batch: {src, seq, at, payload}; at may be at most clock_ahead_max_s (flowmesh.limits()) ahead of the server clock. Inlinable: no SET clause (it would stop the planner inlining it), every name schema-qualified.';

create or replace function flowmesh.raise_problem(problem text, context text default null) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if problem is not null then
    raise exception '%', coalesce(context || ': ', '') || pg_catalog.substr(problem, 7)
      using errcode = pg_catalog.left(problem, 5);
  end if;
end
$$;
comment on function flowmesh.raise_problem(text, text) is
  'Raises the error described by a heartbeat_problem result, prefixed by context; does nothing for null.';

create or replace function flowmesh.check_batch(batch jsonb, noun text, element_problem regproc)
returns integer
language plpgsql stable
set search_path = ''
as $$
declare
  v_item jsonb;
  v_index integer := 0;
  v_problem text;
begin
  if batch is null then
    raise exception 'batch must not be null' using errcode = '22004';
  end if;
  if pg_catalog.jsonb_typeof(batch) <> 'array' then
    raise exception 'batch must be a JSON array of %, got %', noun, pg_catalog.jsonb_typeof(batch)
      using errcode = '22023';
  end if;
  if pg_catalog.jsonb_array_length(batch) > flowmesh.limit_of('batch_max_items') then
    raise exception 'batch has % %; the limit is %', pg_catalog.jsonb_array_length(batch), noun,
      flowmesh.limit_of('batch_max_items')
      using errcode = '54000', hint = 'Split the batch.';
  end if;
  -- the first bad element, by the batch kind's own rule, element by element in
  -- a plpgsql expression naming each rule (inlined into it): one scan of the
  -- batch to start per call, where a dynamic EXECUTE was parsed and planned
  -- every time
  if element_problem::text not in ('flowmesh.batch_item_problem', 'flowmesh.mesh_event_problem',
                                   'flowmesh.hash_item_problem') then
    raise exception 'check_batch has no element rule %', element_problem using errcode = '22023';
  end if;
  for v_item in select i.item from pg_catalog.jsonb_array_elements(batch) as i(item) loop
    v_problem := case element_problem
                   when 'flowmesh.batch_item_problem'::pg_catalog.regproc
                     then flowmesh.batch_item_problem(v_item)
                   when 'flowmesh.mesh_event_problem'::pg_catalog.regproc
                     then flowmesh.mesh_event_problem(v_item)
                   when 'flowmesh.hash_item_problem'::pg_catalog.regproc
                     then flowmesh.hash_item_problem(v_item)
                 end;
    if v_problem is not null then
      perform flowmesh.raise_problem(v_problem, 'batch element ' || v_index);
    end if;
    v_index := v_index + 1;
  end loop;
  return pg_catalog.jsonb_array_length(batch);
end
$$;
comment on function flowmesh.check_batch(jsonb, text, regproc) is
  'Validation of a batch RPC''s batch, shared by every batch RPC: raises 22004/22023/54000 unless it is a JSON array of at most batch_max_items (flowmesh.limits()) elements, then the first problem element_problem(item) reports, prefixed by the element''s index; returns the number of elements. noun names them in messages. element_problem is one of the rules it names (flowmesh.batch_item_problem, flowmesh.mesh_event_problem of 0008, flowmesh.hash_item_problem of 0015): a batch RPC with a new kind of element adds its rule there. Example: select flowmesh.check_batch(''[]'', ''heartbeats'', ''flowmesh.batch_item_problem''); -> 0';

-- derived state: one statement-level trigger for every write path -----------
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

  -- one statement, so every step reads the nodes as they were before these
  -- heartbeats: the history it logs and the rows it writes agree
  with beats as (
    select h.tetrahedron_id, h.source as node_id, h.seq, h.payload ->> 'role' as role,
           case when pg_catalog.jsonb_typeof(h.payload -> 'metrics') = 'object'
                then h.payload -> 'metrics' else '{}'::jsonb end as metrics,
           least(h.created_at, now()) as at
      from new_heartbeats h
  ), latest as (
    -- each source's newest heartbeat sets its node's role, metrics and health
    select distinct on (b.tetrahedron_id, b.node_id) b.*
      from beats b
     order by b.tetrahedron_id, b.node_id, b.at desc, b.seq desc nulls last
  ), known as (
    -- the existing nodes these heartbeats move forward, as they were: the first
    -- heartbeat past their last one, and the start of their current silence if
    -- a pass has logged it (a heartbeat older than the node's latest never
    -- moves its state, or its history, backwards)
    select n.tetrahedron_id, n.node_id, n.health_status, n.health_status_since, n.health_score,
           n.metrics, n.offline_at, coalesce(n.last_heartbeat_at, n.created_at) as heard_at,
           min(b.at) as first_at,
           (select max(s.changed_at) from public.node_status_history s
             where s.tetrahedron_id = n.tetrahedron_id and s.node_id = n.node_id
               and s.status = 'offline'
               and s.changed_at > coalesce(n.last_heartbeat_at, n.created_at)) as logged_offline_at
      from flowmesh.node_records n
      join beats b on b.tetrahedron_id = n.tetrahedron_id and b.node_id = n.node_id
     where n.last_heartbeat_at is null or b.at >= n.last_heartbeat_at
     group by n.tetrahedron_id, n.node_id
  ), after as (
    -- what each node becomes (a heartbeat without metrics keeps the last
    -- ones); when the silence these heartbeats end began, if they end one (as
    -- logged, unless they show it never happened, else by the status rule);
    -- and when the change they make happened: the return from a silence at
    -- its first heartbeat, a change of health at the newest; never before the
    -- node's last change (a device clock a little behind the server's must not
    -- put history out of order)
    select l.tetrahedron_id, l.node_id, l.role, l.seq, l.at, m.metrics,
           h.score as health_score, h.status as health_status,
           k.node_id is not null as known, k.health_status as was, k.health_score as was_score,
           k.health_status_since as was_since, k.heard_at, k.first_at, k.logged_offline_at,
           o.offline_start,
           greatest(case when o.offline_start is not null then k.first_at else l.at end,
                    k.health_status_since) as changed_at
      from latest l
      left join known k on k.tetrahedron_id = l.tetrahedron_id and k.node_id = l.node_id
     cross join lateral (select case when l.metrics = '{}'::jsonb and k.node_id is not null
                                     then k.metrics else l.metrics end as metrics) m
     cross join lateral flowmesh.health(m.metrics) h
     cross join lateral (select case when k.logged_offline_at < k.first_at then k.logged_offline_at
                                     when k.offline_at < k.first_at then k.offline_at
                                end as offline_start) o
  ), forgotten as (
    -- offline periods a pass logged that these heartbeats show never began
    -- (they arrived late, from an agent's outbox)
    delete from public.node_status_history s
     using after a
     where a.known and s.tetrahedron_id = a.tetrahedron_id and s.node_id = a.node_id
       and s.status = 'offline' and s.changed_at > a.heard_at and s.changed_at >= a.first_at
  ), logged as (
    -- the offline period these heartbeats end (unless logged), the return
    -- from it, and any change of health
    insert into public.node_status_history
           (tetrahedron_id, node_id, status, previous, health_score, changed_at)
    select a.tetrahedron_id, a.node_id, 'offline', a.was, a.was_score, a.offline_start
      from after a
     where a.offline_start is distinct from a.logged_offline_at and a.offline_start is not null
    union all
    select a.tetrahedron_id, a.node_id, a.health_status,
           case when a.offline_start is null then a.was else 'offline' end, a.health_score,
           a.changed_at
      from after a
     where a.known and (a.offline_start is not null or a.health_status <> a.was)
    on conflict (tetrahedron_id, node_id, changed_at) where status = 'offline' do nothing
  )
  insert into flowmesh.node_records as n
         (tetrahedron_id, node_id, role, metrics, last_seq, last_heartbeat_at,
          health_score, health_status, health_status_since)
  select a.tetrahedron_id, a.node_id, a.role, a.metrics, a.seq, a.at, a.health_score, a.health_status,
         case when not a.known then a.at
              when a.offline_start is not null or a.health_status <> a.was then a.changed_at
              else a.was_since end
    from after a
  on conflict (tetrahedron_id, node_id) do update
     set last_heartbeat_at = excluded.last_heartbeat_at,
         metrics = excluded.metrics,
         role = coalesce(excluded.role, n.role),
         last_seq = greatest(n.last_seq, excluded.last_seq),
         health_score = excluded.health_score,
         health_status = excluded.health_status,
         health_status_since = excluded.health_status_since,
         updated_at = now()
   where n.last_heartbeat_at is null or n.last_heartbeat_at <= excluded.last_heartbeat_at;
  return null;
end
$$;
comment on function flowmesh.apply_heartbeats() is
  'Trigger: after heartbeats are inserted, advance tetrahedrons.last_heartbeat_at and upsert each source''s node record from its newest heartbeat (metrics, role, last_seq, health score and health_status under health_rules). Logs in node_status_history each change of health, and an offline period the heartbeats end (from the last heartbeat plus the timeout to the first new one) unless a pass logged it; removes one a pass logged that late heartbeats show never began.';
revoke all on function flowmesh.apply_heartbeats() from public, anon, authenticated;

create or replace trigger mesh_heartbeats_apply
  after insert on public.mesh_heartbeats
  referencing new table as new_heartbeats
  for each statement execute function flowmesh.apply_heartbeats();

-- public RPCs ----------------------------------------------------------------
create or replace function public.record_mesh_heartbeat(t_uuid uuid, src text, payload jsonb)
returns public.mesh_heartbeats
language plpgsql security definer
set search_path = ''
as $$
declare
  v_row public.mesh_heartbeats;
begin
  perform flowmesh.authorize_writer(t_uuid, array[src]);
  perform flowmesh.raise_problem(flowmesh.heartbeat_problem(src, record_mesh_heartbeat.payload));
  perform flowmesh.ensure_heartbeat_partition((now() at time zone 'UTC')::date);
  insert into public.mesh_heartbeats (tetrahedron_id, source, payload)
  values (t_uuid, src, record_mesh_heartbeat.payload)
  returning * into v_row;
  return v_row;
end
$$;
comment on function public.record_mesh_heartbeat(uuid, text, jsonb) is
  'Record one heartbeat from src in tetrahedron t_uuid and return the stored row. Updates tetrahedrons.last_heartbeat_at and the nodes row of src. Callable by service_role, by an authenticated user as a node they own, and by a device credential as its own node (flowmesh.authorize_writer). Example: select id, source from record_mesh_heartbeat(''6f1c...''::uuid, ''device-abc'', ''{"ping": true}'');';

create or replace function public.record_mesh_heartbeats(t_uuid uuid, batch jsonb)
returns table (received integer, inserted integer, duplicates integer)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_received integer;
  v_inserted integer;
begin
  -- the whole batch is refused if any element names a node the caller may not write as
  perform flowmesh.authorize_writer(t_uuid, flowmesh.batch_writers(batch, 'src'));
  v_received := flowmesh.check_batch(batch, 'heartbeats', 'flowmesh.batch_item_problem');

  -- a call only for a day whose partition is missing (usually none is)
  perform flowmesh.ensure_heartbeat_partition(d.day)
     from (select distinct (pg_catalog.to_timestamp((i.item ->> 'at')::double precision)
                            at time zone 'UTC')::date as day
             from pg_catalog.jsonb_array_elements(batch) as i(item)) d
    where not flowmesh.heartbeat_partition_exists(d.day);

  insert into public.mesh_heartbeats (tetrahedron_id, source, seq, payload, created_at)
  select t_uuid, i.item ->> 'src', (i.item ->> 'seq')::bigint, i.item -> 'payload',
         pg_catalog.to_timestamp((i.item ->> 'at')::double precision)
    from pg_catalog.jsonb_array_elements(batch) as i(item)
  on conflict (tetrahedron_id, source, seq, created_at) do nothing;
  get diagnostics v_inserted = row_count;

  received := v_received;  -- assignments, not a query: one row to return
  inserted := v_inserted;
  duplicates := v_received - v_inserted;
  return next;
end
$$;
comment on function public.record_mesh_heartbeats(uuid, jsonb) is
  'Record a batch of heartbeats for one tetrahedron, atomically and idempotently. batch is a JSON array of {"src": text, "seq": positive integer, "at": Unix seconds (at most clock_ahead_max_s of flowmesh.limits() ahead of the server), "payload": object}. A (src, seq, at) already recorded is skipped, so replaying a batch inserts nothing. Returns received, inserted and duplicates. One bad element rejects the whole batch with its index in the message. Example: select * from record_mesh_heartbeats(''6f1c...''::uuid, ''[{"src": "pi", "seq": 1, "at": 1763740000, "payload": {}}]'') -> (1, 1, 0).';

create or replace function public.register_node(
  tetrahedron_name text, node_id text, node_role text default null)
returns uuid
language plpgsql security definer
set search_path = ''
as $$
declare
  v_tetrahedron uuid;
  v_uid uuid := (select auth.uid());
begin
  if tetrahedron_name is null or node_id is null then
    raise exception 'tetrahedron_name and node_id must not be null' using errcode = '22004';
  end if;
  if not flowmesh.is_tetrahedron_name(tetrahedron_name) then
    raise exception 'tetrahedron_name must be 1 to % printable characters',
      flowmesh.limit_of('tetrahedron_name_max_chars') using errcode = '22023';
  end if;
  perform flowmesh.raise_problem(flowmesh.node_id_problem(register_node.node_id, 'node_id'));

  select t.id into v_tetrahedron from public.tetrahedrons t where t.name = tetrahedron_name;

  -- an existing tetrahedron is joined only by one of its users, as a node that
  -- is new or theirs; a device registers only itself, in its own tetrahedron
  perform flowmesh.authorize_writer(v_tetrahedron, array[register_node.node_id], registering => true);
  if flowmesh.caller_is_device() then
    v_uid := null;  -- a device's claims are its own to set: they name no owner
  end if;

  if v_tetrahedron is null then
    insert into public.tetrahedrons (name) values (tetrahedron_name)
    on conflict (name) do nothing
    returning id into v_tetrahedron;
    if v_tetrahedron is null then
      -- created concurrently by someone else: joining it is joining an existing
      -- tetrahedron, authorized as such
      select t.id into v_tetrahedron from public.tetrahedrons t where t.name = tetrahedron_name;
      perform flowmesh.authorize_writer(v_tetrahedron, array[register_node.node_id], registering => true);
    end if;
  end if;

  insert into public.tetrahedron_vertices (tetrahedron_id, node_id, user_id)
  values (v_tetrahedron, register_node.node_id, v_uid)
  on conflict on constraint tetrahedron_vertices_pkey do update
     set user_id = coalesce(public.tetrahedron_vertices.user_id, excluded.user_id);

  insert into flowmesh.node_records (tetrahedron_id, node_id, role)
  values (v_tetrahedron, register_node.node_id, node_role)
  on conflict on constraint node_records_pkey do update
     set role = coalesce(excluded.role, flowmesh.node_records.role), updated_at = now();

  return v_tetrahedron;
end
$$;
comment on function public.register_node(text, text, text) is
  'Make node_id a vertex of the tetrahedron named tetrahedron_name, creating the tetrahedron when it does not exist, and return the tetrahedron id. Who may (flowmesh.authorize_writer): privileged roles anything; authenticated users create a tetrahedron, or add to one they are a vertex of a node that is new or theirs (it becomes theirs); a device credential only its own node in its own tetrahedron. Example: select register_node(''home'', ''pi-kitchen'', ''orchestrator'') -> 6f1c...';

-- privileges -----------------------------------------------------------------
revoke all on function flowmesh.caller(), flowmesh.caller_is_privileged(),
  flowmesh.caller_is_device(), flowmesh.authorize_writer(uuid, text[], boolean),
  flowmesh.batch_writers(jsonb, text), flowmesh.heartbeat_problem(text, jsonb),
  flowmesh.batch_item_problem(jsonb), flowmesh.raise_problem(text, text),
  flowmesh.check_batch(jsonb, text, regproc) from public, anon;
grant execute on function flowmesh.caller(), flowmesh.caller_is_privileged(),
  flowmesh.caller_is_device(), flowmesh.authorize_writer(uuid, text[], boolean),
  flowmesh.batch_writers(jsonb, text), flowmesh.heartbeat_problem(text, jsonb),
  flowmesh.batch_item_problem(jsonb), flowmesh.raise_problem(text, text),
  flowmesh.check_batch(jsonb, text, regproc) to authenticated, service_role;

revoke all on function public.record_mesh_heartbeat(uuid, text, jsonb),
  public.record_mesh_heartbeats(uuid, jsonb),
  public.register_node(text, text, text) from public, anon;
grant execute on function public.record_mesh_heartbeat(uuid, text, jsonb),
  public.record_mesh_heartbeats(uuid, jsonb),
  public.register_node(text, text, text) to authenticated, service_role;
