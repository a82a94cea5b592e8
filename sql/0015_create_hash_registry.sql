-- 0015_create_hash_registry.sql
-- The hash registry: what devices recognised (a face, a plate, a sound), as a
-- hash with a data type, the node that registered it, an embedding, a
-- confidence and metadata, per tetrahedron; searchable by similarity with
-- pgvector (an HNSW index for cosine distance) and by hash, type or node.
-- Agents write through register_hashes from their outbox, as heartbeats.
--
-- pgvector lives in the schema extensions, as Supabase installs it, so its
-- own functions stay out of the API schema. On a server without pgvector, or
-- where the migrating role may not create it (it is not a trusted extension),
-- the rest of the schema installs all the same: the registry's functions exist
-- and raise 0A000 naming the missing extension; install pgvector and apply
-- this file again (it is idempotent) to get the registry.

-- the extension, where the server has it ----------------------------------------
do $$
declare
  v_schema text;
begin
  if not exists (select from pg_catalog.pg_available_extensions where name = 'vector') then
    return;
  end if;
  create schema if not exists extensions;
  select e.extnamespace::regnamespace::text into v_schema
    from pg_catalog.pg_extension e where e.extname = 'vector';
  if v_schema is null then
    begin
      create extension vector with schema extensions;
    exception when insufficient_privilege then
      -- pgvector is not a trusted extension: a database owner that is not a
      -- superuser cannot create it. The registry waits for one who does.
      raise notice 'the hash registry needs pgvector, which only a superuser can install here: %',
        'create extension vector with schema extensions; then apply this file again';
      return;
    end;
  elsif v_schema <> 'extensions' then
    raise exception 'pgvector is installed in schema %; FlowMesh expects it in schema extensions, as Supabase installs it', v_schema
      using errcode = '55000', hint = 'alter extension vector set schema extensions;';
  end if;
  grant usage on schema extensions to authenticated, service_role;
end
$$;

-- validation (needs no pgvector) ---------------------------------------------------
create or replace function flowmesh.hash_item_problem(item jsonb) returns text
language sql stable
as $$
  select case
    when pg_catalog.jsonb_typeof(item) is distinct from 'object'
      then '22023 must be a JSON object with hash, data_type, node and embedding, got '
           || coalesce(pg_catalog.jsonb_typeof(item), 'null')
    when pg_catalog.jsonb_typeof(item -> 'hash') is distinct from 'string'
         or pg_catalog.length(item ->> 'hash') not between 1 and flowmesh.limit_of('hash_max_chars')
         or item ->> 'hash' ~ '[[:cntrl:]]'
      then '22023 hash must be a string of 1 to ' || flowmesh.limit_of('hash_max_chars')::text
           || ' printable characters'
    when pg_catalog.jsonb_typeof(item -> 'data_type') is distinct from 'string'
         or item ->> 'data_type' !~ '^[a-z][a-z0-9_.-]{0,63}$'
      then '22023 data_type must be 1 to 64 characters of a-z, 0-9, _ . - starting with a letter'
    when pg_catalog.jsonb_typeof(item -> 'node') is distinct from 'string'
      then '22023 node must be a string'
    when flowmesh.node_id_problem(item ->> 'node', 'node') is not null
      then flowmesh.node_id_problem(item ->> 'node', 'node')
    when pg_catalog.jsonb_typeof(item -> 'embedding') is distinct from 'array'
      then '22023 embedding must be an array of ' || flowmesh.limit_of('embedding_dimensions')::text
           || ' numbers, got ' || coalesce(pg_catalog.jsonb_typeof(item -> 'embedding'), 'nothing')
    when pg_catalog.jsonb_array_length(item -> 'embedding') <> flowmesh.limit_of('embedding_dimensions')
      then '22023 embedding has ' || pg_catalog.jsonb_array_length(item -> 'embedding')::text
           || ' dimensions; it must have ' || flowmesh.limit_of('embedding_dimensions')::text
    when exists (select from pg_catalog.jsonb_array_elements(item -> 'embedding') x(v)
                  where pg_catalog.jsonb_typeof(x.v) <> 'number')
      then '22023 embedding must hold numbers only'
    when not exists (select from pg_catalog.jsonb_array_elements(item -> 'embedding') x(v)
                      where (x.v #>> '{}')::double precision <> 0)
      then '22023 embedding must not be all zeros (it has no direction to compare)'
    when item ? 'confidence' and pg_catalog.jsonb_typeof(item -> 'confidence') <> 'null'
         and (pg_catalog.jsonb_typeof(item -> 'confidence') <> 'number'
              or (item ->> 'confidence')::double precision not between 0 and 1)
      then '22023 confidence must be a number between 0 and 1'
    when item ? 'metadata' and pg_catalog.jsonb_typeof(item -> 'metadata') not in ('object', 'null')
      then '22023 metadata must be a JSON object'
    when item ? 'version' and (pg_catalog.jsonb_typeof(item -> 'version') <> 'number'
         or (item ->> 'version')::numeric < 1 or (item ->> 'version')::numeric > 9223372036854775807
         or (item ->> 'version')::numeric <> pg_catalog.trunc((item ->> 'version')::numeric))
      then '22023 version must be a positive integer'
    when pg_catalog.pg_column_size(item - 'embedding') > flowmesh.limit_of('payload_max_bytes')
      then '54000 entry is ' || pg_catalog.pg_column_size(item - 'embedding')::text
           || ' bytes besides its embedding; the limit is ' || flowmesh.limit_of('payload_max_bytes')::text
  end
$$;
comment on function flowmesh.hash_item_problem(jsonb) is
  'Validation rule for one register_hashes element: null when acceptable, else the SQLSTATE, a space and the reason. hash: 1 to hash_max_chars printable characters; data_type: [a-z][a-z0-9_.-]{0,63}; node: a node id; embedding: embedding_dimensions numbers, not all zero; confidence: null or 0 to 1; metadata: an object; version: a positive integer; the entry besides its embedding at most payload_max_bytes. Inlinable: no SET clause, every name schema-qualified. Example: select flowmesh.hash_item_problem(''{"hash": "h"}''); -> 22023 data_type must be ...';
revoke all on function flowmesh.hash_item_problem(jsonb) from public, anon;
grant execute on function flowmesh.hash_item_problem(jsonb) to authenticated, service_role;

-- the registry, where pgvector is --------------------------------------------------
do $registry$
begin
  if not exists (select from pg_catalog.pg_extension where extname = 'vector') then
    -- the same names, saying what is missing, so a caller gets one clear error
    execute $stub$
      create or replace function flowmesh.registry_unavailable() returns void
      language plpgsql immutable
      set search_path = ''
      as $f$
      begin
        raise exception 'the hash registry needs the PostgreSQL extension vector (pgvector), which is not installed in this database'
          using errcode = '0A000',
                hint = 'Install pgvector on the server; a superuser runs: create extension vector with schema extensions; then apply sql/0015_create_hash_registry.sql again.';
      end
      $f$;
      comment on function flowmesh.registry_unavailable() is
        'Raises 0A000: the hash registry needs pgvector (the extension vector), which this server lacks. Every registry function calls it on such a server.';

      create or replace function public.register_hashes(t_uuid uuid, batch jsonb)
      returns table (received integer, inserted integer, duplicates integer)
      language plpgsql security definer
      set search_path = ''
      as $f$ begin perform flowmesh.registry_unavailable(); end $f$;
      comment on function public.register_hashes(uuid, jsonb) is
        'The hash registry''s write RPC; this server has no pgvector, so it raises 0A000 naming the extension.';

      create or replace function public.search_hashes(t_uuid uuid, embedding text, k integer default 10,
                                                      data_type text default null, node text default null)
      returns table (hash text, node_id text, type text, distance double precision,
                     confidence double precision, metadata jsonb, version bigint)
      language plpgsql stable
      set search_path = ''
      as $f$ begin perform flowmesh.registry_unavailable(); end $f$;
      comment on function public.search_hashes(uuid, text, integer, text, text) is
        'Nearest-neighbour search of the hash registry; this server has no pgvector, so it raises 0A000 naming the extension.';

      create or replace function public.hashes(t_uuid uuid, hash_value text default null,
                                               data_type text default null, node text default null,
                                               lim integer default 100)
      returns table (hash text, type text, node_id text, confidence double precision, metadata jsonb,
                     version bigint, embedding real[], created_at timestamptz, updated_at timestamptz)
      language plpgsql stable
      set search_path = ''
      as $f$ begin perform flowmesh.registry_unavailable(); end $f$;
      comment on function public.hashes(uuid, text, text, text, integer) is
        'Lookups in the hash registry; this server has no pgvector, so it raises 0A000 naming the extension.';

      revoke all on function public.search_hashes(uuid, text, integer, text, text),
        public.hashes(uuid, text, text, text, integer), flowmesh.registry_unavailable() from public, anon;
      grant execute on function public.search_hashes(uuid, text, integer, text, text),
        public.hashes(uuid, text, text, text, integer), flowmesh.registry_unavailable()
        to authenticated, service_role;
    $stub$;
    return;
  end if;

  -- the dimension is the limit's (flowmesh.limits()), stated once
  execute pg_catalog.format($ddl$
    create table if not exists public.hash_registry (
      tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
      hash           text not null,
      data_type      text not null,
      node_id        flowmesh.node_id not null,
      embedding      extensions.vector(%s) not null,
      confidence     double precision,
      metadata       jsonb not null default '{}'::jsonb,
      version        bigint not null default 1,
      created_at     timestamptz not null default now(),
      updated_at     timestamptz not null default now(),
      constraint hash_registry_pkey primary key (tetrahedron_id, hash),
      constraint hash_registry_confidence_check check (confidence between 0 and 1),
      constraint hash_registry_version_check check (version > 0),
      constraint hash_registry_metadata_check check (pg_catalog.jsonb_typeof(metadata) = 'object')
    );
    comment on table public.hash_registry is
      'What devices recognised: one entry per tetrahedron and hash, with its data type, the node that registered it, an embedding of embedding_dimensions (flowmesh.limits()) dimensions (pgvector), a confidence, metadata and a version (a higher version replaces the entry). Written by register_hashes; searched by search_hashes (cosine distance, HNSW).';
    create index if not exists hash_registry_tetrahedron_id_data_type_idx
      on public.hash_registry (tetrahedron_id, data_type);
    create index if not exists hash_registry_tetrahedron_id_node_id_idx
      on public.hash_registry (tetrahedron_id, node_id);
    -- HNSW for cosine distance. m (links per node, 16) and ef_construction (the
    -- build's candidate list, 64) are pgvector's defaults: higher values buy
    -- recall with build time and memory. ef_search (hnsw.ef_search, per query,
    -- default 40) trades latency for recall at search time; search_hashes sets
    -- iterative scans so a filter still returns k rows.
    create index if not exists hash_registry_embedding_idx
      on public.hash_registry using hnsw (embedding extensions.vector_cosine_ops)
      with (m = 16, ef_construction = 64);

    alter table public.hash_registry enable row level security;
    drop policy if exists hash_registry_select_authenticated on public.hash_registry;
    create policy hash_registry_select_authenticated on public.hash_registry
      for select to authenticated
      using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
    revoke all on table public.hash_registry from anon, authenticated, service_role;
    grant select on table public.hash_registry to authenticated;
    grant all on table public.hash_registry to service_role;
  $ddl$, flowmesh.limit_of('embedding_dimensions'));

  execute $fn$
    create or replace function public.register_hashes(t_uuid uuid, batch jsonb)
    returns table (received integer, inserted integer, duplicates integer)
    language plpgsql security definer
    set search_path = ''
    as $f$
    declare
      v_received integer;
      v_written integer;
    begin
      -- the whole batch is refused if any element's node is one the caller may not write as
      perform flowmesh.authorize_writer(t_uuid, flowmesh.batch_writers(batch, 'node'));
      v_received := flowmesh.check_batch(batch, 'hashes', 'flowmesh.hash_item_problem');

      -- one statement: all or nothing. Within a batch the highest version of a
      -- hash wins; against the table, only a higher version replaces an entry
      insert into public.hash_registry as r
             (tetrahedron_id, hash, data_type, node_id, embedding, confidence, metadata, version)
      select distinct on (i.item ->> 'hash')
             t_uuid, i.item ->> 'hash', i.item ->> 'data_type', i.item ->> 'node',
             (i.item ->> 'embedding')::extensions.vector,
             flowmesh.number(i.item -> 'confidence'),
             coalesce(nullif(i.item -> 'metadata', 'null'::jsonb), '{}'::jsonb),
             coalesce((i.item ->> 'version')::bigint, 1)
        from pg_catalog.jsonb_array_elements(batch) as i(item)
       order by i.item ->> 'hash', coalesce((i.item ->> 'version')::bigint, 1) desc
      on conflict (tetrahedron_id, hash) do update
         set data_type = excluded.data_type, node_id = excluded.node_id, embedding = excluded.embedding,
             confidence = excluded.confidence, metadata = excluded.metadata, version = excluded.version,
             updated_at = now()
       where r.version < excluded.version;
      get diagnostics v_written = row_count;
      return query select v_received, v_written, v_received - v_written;
    end
    $f$;
    comment on function public.register_hashes(uuid, jsonb) is
      'Register hash entries, atomically and idempotently by (hash, version). batch is a JSON array of {"hash", "data_type", "node", "embedding": [512 numbers], "confidence"?: 0..1, "metadata"?: object, "version"?: positive integer, default 1}; a higher version replaces an entry, the same or a lower one writes nothing (counted as a duplicate). Each node must be one the caller may write as (flowmesh.authorize_writer). Bad input raises 22023/22004/54000 naming the element, and writes nothing. Example: select * from register_hashes(''6f1c...''::uuid, ''[{"hash": "face_123", "data_type": "person", "node": "cam", "embedding": [0.1, ...]}]'') -> (1, 1, 0)';

    create or replace function public.search_hashes(t_uuid uuid, embedding extensions.vector,
                                                    k integer default 10, data_type text default null,
                                                    node text default null)
    returns table (hash text, node_id text, type text, distance double precision,
                   confidence double precision, metadata jsonb, version bigint)
    language plpgsql stable
    set search_path = ''
    as $f$
    begin
      if search_hashes.embedding is null then
        raise exception 'embedding must not be null' using errcode = '22004';
      end if;
      if extensions.vector_dims(search_hashes.embedding) <> flowmesh.limit_of('embedding_dimensions') then
        raise exception 'embedding has % dimensions; it must have %',
          extensions.vector_dims(search_hashes.embedding),
          flowmesh.limit_of('embedding_dimensions') using errcode = '22023';
      end if;
      if k is null or k < 1 or k > flowmesh.limit_of('search_max_k') then
        raise exception 'k is %; it must be between 1 and %', coalesce(k::text, 'null'),
          flowmesh.limit_of('search_max_k') using errcode = '22023';
      end if;
      -- a filter on data type or node must not starve the HNSW scan: iterative
      -- scans go on until k rows pass it (pgvector 0.8)
      perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
      return query
        select r.hash, r.node_id::text, r.data_type,
               (r.embedding operator(extensions.<=>) search_hashes.embedding)::double precision,
               r.confidence, r.metadata, r.version
          from public.hash_registry r
         where r.tetrahedron_id = t_uuid
           and (search_hashes.data_type is null or r.data_type = search_hashes.data_type)
           and (search_hashes.node is null or r.node_id = search_hashes.node)
         order by r.embedding operator(extensions.<=>) search_hashes.embedding
         limit k;
    end
    $f$;
    comment on function public.search_hashes(uuid, extensions.vector, integer, text, text) is
      'The k (1 to search_max_k) entries of a tetrahedron nearest to embedding by cosine distance, nearest first, optionally only of one data_type or node; through the HNSW index with iterative scans, so a filter still returns k rows when there are. Row-level security applies. A JSON array literal casts to vector. Example: select hash, node_id, distance from search_hashes(''6f1c...''::uuid, ''[0.1, ...]'', 5, ''person'');';

    create or replace function public.hashes(t_uuid uuid, hash_value text default null, data_type text default null,
                                             node text default null, lim integer default 100)
    returns table (hash text, type text, node_id text, confidence double precision, metadata jsonb,
                   version bigint, embedding real[], created_at timestamptz, updated_at timestamptz)
    language sql stable
    set search_path = ''
    as $f$
      select r.hash, r.data_type, r.node_id::text, r.confidence, r.metadata, r.version,
             r.embedding::real[], r.created_at, r.updated_at
        from public.hash_registry r
       where r.tetrahedron_id = t_uuid
         and ($2 is null or r.hash = $2)
         and ($3 is null or r.data_type = $3)
         and ($4 is null or r.node_id = $4)
       order by r.updated_at desc, r.hash
       limit greatest(least($5, flowmesh.limit_of('search_max_k')), 0)
    $f$;
    comment on function public.hashes(uuid, text, text, text, integer) is
      'Registry entries of a tetrahedron by hash, data type or node (any combination; null: any), newest first, at most lim (up to search_max_k), with the embedding as real[]: the seed''s lookups. Row-level security applies. Example: select hash, node_id from hashes(''6f1c...''::uuid, data_type => ''person'');';

    revoke all on function public.search_hashes(uuid, extensions.vector, integer, text, text),
      public.hashes(uuid, text, text, text, integer) from public, anon;
    grant execute on function public.search_hashes(uuid, extensions.vector, integer, text, text),
      public.hashes(uuid, text, text, text, integer) to authenticated, service_role;
  $fn$;
end
$registry$;

revoke all on function public.register_hashes(uuid, jsonb) from public, anon;
grant execute on function public.register_hashes(uuid, jsonb) to authenticated, service_role;
