-- 0013_create_device_credentials.sql
-- One credential per device: least privilege for the agents. `flowmesh devices
-- add` creates, per device, a LOGIN role that is a member of the group role
-- flowmesh_device, and a row of flowmesh.device_credentials that ties the role
-- to its vertex (tetrahedron, node). The group holds the only rights a device
-- has: EXECUTE on the write RPCs its agent calls (the heartbeat RPCs, single
-- and batched, record_mesh_events, register_node) and what the agent reads
-- at start-up (the limits, the migration revision). No table directly. What a
-- device may write is decided in one place, flowmesh.authorize_writer (0006):
-- its own tetrahedron, as its own node, nothing else.
--
-- Roles are cluster-wide: the group is created only where missing (creating it
-- needs CREATEROLE; on Supabase the migration role has it). The device roles
-- themselves are created and dropped by the CLI, never by a migration.

-- a database migrated by an earlier cut of the chain -------------------------
-- The chain was edited in place before FlowMesh's first release (0003-0012 now
-- hold the write rule devices depend on). A database migrated before that would
-- get this file alone, and its old write rule trusts request.jwt.claims, which
-- any session, a device's included, may set: refuse rather than grant devices
-- anything there.
do $$
begin
  if pg_catalog.to_regprocedure('flowmesh.authorize_writer(uuid, text[], boolean)') is null then
    raise exception 'this database was migrated by an earlier, unreleased cut of the FlowMesh chain'
      using errcode = '55000',
            hint = 'Create it anew (flowmesh db stop, remove the data directory, flowmesh db up), '
                   'or migrate a new database and copy the data.';
  end if;
end
$$;

-- the group role -------------------------------------------------------------
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'flowmesh_device') then
    begin
      create role flowmesh_device nologin noinherit nosuperuser nocreatedb nocreaterole
        noreplication nobypassrls;
    exception when insufficient_privilege then
      raise exception 'creating the group role flowmesh_device needs CREATEROLE'
        using errcode = '42501',
              hint = 'Have a superuser run: create role flowmesh_device nologin; then migrate again.';
    end;
    comment on role flowmesh_device is
      'FlowMesh device credentials (flowmesh devices add) are members of this group: EXECUTE on the agent''s write RPCs, which write only as the device''s own node (flowmesh.authorize_writer); no table rights.';
  end if;
end
$$;

-- the credentials --------------------------------------------------------------
create table if not exists flowmesh.device_credentials (
  tetrahedron_id uuid not null,
  node_id        flowmesh.node_id not null,
  role_name      text not null,
  created_at     timestamptz not null default now(),
  last_used_at   timestamptz,
  -- one credential per device; keyed by tetrahedron like every distributed table
  constraint device_credentials_pkey primary key (tetrahedron_id, node_id),
  -- a vertex with a credential is not deleted until the credential is revoked:
  -- a login role must never outlive the row that says what it may do
  constraint device_credentials_vertex_fkey foreign key (tetrahedron_id, node_id)
    references public.tetrahedron_vertices (tetrahedron_id, node_id) on delete restrict
);
comment on table flowmesh.device_credentials is
  'Which device credential (a LOGIN role in the flowmesh_device group) is which vertex: flowmesh.authorize_writer lets role_name write only to tetrahedron_id as node_id. Written by flowmesh devices add/revoke; last_used_at by authorize_writer, at most once a minute. Holds no secret (the role''s password is stored by PostgreSQL, as a SCRAM verifier).';
comment on column flowmesh.device_credentials.last_used_at is
  'When the credential last wrote (to the minute: flowmesh.authorize_writer updates it at most once a minute); null when it never has.';
-- authorize_writer finds the caller's row by role. No unique index: role names
-- are unique in the cluster already (pg_authid), and a unique key without
-- tetrahedron_id could not be enforced by a shard (test_distributable.py)
create index if not exists device_credentials_role_name_idx
  on flowmesh.device_credentials (role_name);

alter table flowmesh.device_credentials enable row level security;
drop policy if exists device_credentials_select_authenticated on flowmesh.device_credentials;
-- a user sees the credentials of the tetrahedrons they are a vertex of
create policy device_credentials_select_authenticated on flowmesh.device_credentials
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table flowmesh.device_credentials from public, anon, authenticated, service_role;
grant select on table flowmesh.device_credentials to authenticated;
grant all on table flowmesh.device_credentials to service_role;

-- what the group may do --------------------------------------------------------
-- the write RPCs (each authorizes the caller first, see 0006)
grant execute on function public.record_mesh_heartbeat(uuid, text, jsonb),
  public.record_mesh_heartbeats(uuid, jsonb),
  public.record_mesh_events(uuid, jsonb),
  public.register_node(text, text, text) to flowmesh_device;
-- what the agent reads besides: the limits, and the migration revision (Alembic's
-- table is there only where Alembic applied the migrations)
grant usage on schema flowmesh to flowmesh_device;
grant execute on function flowmesh.limits(), flowmesh.limit_of(text) to flowmesh_device;
do $$
begin
  if pg_catalog.to_regclass('flowmesh.alembic_version') is not null then
    grant select on table flowmesh.alembic_version to flowmesh_device;
  end if;
end
$$;
