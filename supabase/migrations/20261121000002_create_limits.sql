-- 0002_create_limits.sql
-- The private schema flowmesh, and FlowMesh's limits, each stated once.
-- flowmesh.limits() holds the numbers under the names flowmesh/limits.py
-- gives them (a test proves the two agree); flowmesh.limit_of(name) reads
-- one; and the shape of a node id and of a tetrahedron name is written once on
-- top of them, for RPC validation and for the domains flowmesh.node_id and
-- flowmesh.tetrahedron_name, the type of every column that stores one. All of
-- these functions are immutable and inlinable, so a limit folds to a constant
-- when an expression is planned. (A domain's check is planned once per
-- session; a table's check constraint would be planned, and its limit looked
-- up, for every statement that writes the table.)

create schema if not exists flowmesh;
comment on schema flowmesh is
  'FlowMesh private helpers used by policies, triggers and RPC functions, and the stored node records behind public.nodes; not part of the API.';
revoke all on schema flowmesh from public;
grant usage on schema flowmesh to authenticated, service_role;

create or replace function flowmesh.limits() returns jsonb
language sql immutable parallel safe
as $$
  select '{"node_id_max_bytes": 128,
           "tetrahedron_name_max_chars": 128,
           "clock_ahead_max_s": 300,
           "batch_max_items": 10000,
           "payload_max_bytes": 16384,
           "series_max_buckets": 1000,
           "embedding_dimensions": 512,
           "hash_max_chars": 256,
           "search_max_k": 1000}'::jsonb
$$;
comment on function flowmesh.limits() is
  'Every FlowMesh limit by name: node_id_max_bytes (a node id is 1 to this many bytes of printable UTF-8), tetrahedron_name_max_chars, clock_ahead_max_s (how far ahead of the server a batched heartbeat''s time may be), batch_max_items (elements per batch RPC call), payload_max_bytes (a heartbeat payload or mesh event, as stored), series_max_buckets (time buckets in one heatmap or chart request), embedding_dimensions (of every hash registry embedding), hash_max_chars (a registry hash), search_max_k (entries one registry search or lookup returns). flowmesh/limits.py states the same numbers. Inlinable: no SET clause, so a limit is a constant once planned. Example: select flowmesh.limits() ->> ''batch_max_items''; -> 10000';

create or replace function flowmesh.limit_of(limit_name text) returns integer
language sql immutable parallel safe
as $$
  select (flowmesh.limits() ->> limit_name)::integer
$$;
comment on function flowmesh.limit_of(text) is
  'One limit of flowmesh.limits() by name (null for an unknown name; a test checks every name the migrations use). Inlinable: no SET clause; every name schema-qualified. Example: select flowmesh.limit_of(''node_id_max_bytes''); -> 128';

create or replace function flowmesh.is_node_id(value text) returns boolean
language sql immutable parallel safe
as $$
  select pg_catalog.octet_length(value) between 1 and flowmesh.limit_of('node_id_max_bytes')
     and value !~ '[[:cntrl:]]'
$$;
comment on function flowmesh.is_node_id(text) is
  'The shape of a node id wherever one is stored (a heartbeat''s source, a vertex, an observer, a voter...): 1 to node_id_max_bytes bytes of UTF-8, no control characters. Null for null. Inlinable: no SET clause; every name schema-qualified. Example: select flowmesh.is_node_id(repeat(''é'', 128)); -> false (256 bytes)';

create or replace function flowmesh.node_id_problem(value text, what text) returns text
language sql immutable parallel safe
as $$
  select case
    when value is null then '22004 ' || what || ' must not be null'
    when not flowmesh.is_node_id(value)
      -- ::text: text || integer is only stable, which would stop an immutable
      -- function inlining
      then '22023 ' || what || ' must be 1 to ' || flowmesh.limit_of('node_id_max_bytes')::text
           || ' bytes of printable UTF-8'
  end
$$;
comment on function flowmesh.node_id_problem(text, text) is
  'Validation of a node id argument named what: null when acceptable, else the SQLSTATE, a space and the reason (the shape every RPC reports). Inlinable: no SET clause; every name schema-qualified. Example: select flowmesh.node_id_problem('''', ''src''); -> 22023 src must be 1 to 128 bytes of printable UTF-8';

create or replace function flowmesh.is_tetrahedron_name(value text) returns boolean
language sql immutable parallel safe
as $$
  select pg_catalog.char_length(value) between 1 and flowmesh.limit_of('tetrahedron_name_max_chars')
     and value !~ '[[:cntrl:]]'
$$;
comment on function flowmesh.is_tetrahedron_name(text) is
  'The shape of a tetrahedron name: 1 to tetrahedron_name_max_chars characters, no control characters. Inlinable: no SET clause; every name schema-qualified. Example: select flowmesh.is_tetrahedron_name(''home''); -> true';

do $$
begin
  if pg_catalog.to_regtype('flowmesh.node_id') is null then
    create domain flowmesh.node_id as text
      constraint node_id_check check (flowmesh.is_node_id(value));
  end if;
  if pg_catalog.to_regtype('flowmesh.tetrahedron_name') is null then
    create domain flowmesh.tetrahedron_name as text
      constraint tetrahedron_name_check check (flowmesh.is_tetrahedron_name(value));
  end if;
end
$$;
comment on domain flowmesh.node_id is
  'A node id, wherever one is stored (a heartbeat''s source, a vertex, an observer, a voter...): text of the shape flowmesh.is_node_id checks.';
comment on domain flowmesh.tetrahedron_name is
  'A tetrahedron''s name: text of the shape flowmesh.is_tetrahedron_name checks.';

-- domain checks call these as the writing role, so writers need them too
revoke all on function flowmesh.limits(), flowmesh.limit_of(text), flowmesh.is_node_id(text),
  flowmesh.node_id_problem(text, text), flowmesh.is_tetrahedron_name(text) from public, anon;
grant execute on function flowmesh.limits(), flowmesh.limit_of(text), flowmesh.is_node_id(text),
  flowmesh.node_id_problem(text, text), flowmesh.is_tetrahedron_name(text) to authenticated, service_role;
