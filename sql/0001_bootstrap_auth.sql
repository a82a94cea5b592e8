-- 0001_bootstrap_auth.sql
-- Supabase's API roles (anon, authenticated, service_role) and the auth.uid(),
-- auth.role() and auth.jwt() helpers that row-level security is written
-- against. On Supabase all of them already exist and this file leaves them
-- alone; on plain PostgreSQL it creates compatible ones, reading the JWT claims
-- from the `request.jwt.claims` setting exactly as PostgREST sets it, so the
-- same policies are enforced and tested everywhere.

-- roles ------------------------------------------------------------------
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    -- as on Supabase: the service role bypasses row-level security
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

-- auth schema and helpers, only where missing ----------------------------
create schema if not exists auth;

do $$
begin
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
    language sql stable
    set search_path = ''
    as $f$
      select coalesce(
        nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb,
        '{}'::jsonb
      )
    $f$;
    comment on function auth.jwt() is
      'The JWT claims of the current request, from request.jwt.claims as PostgREST sets it; {} outside a request.';
  end if;

  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
    language sql stable
    set search_path = ''
    as $f$
      select nullif(
        coalesce(
          nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
          nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
        ),
        ''
      )::uuid
    $f$;
    comment on function auth.uid() is
      'The user id (the sub claim) of the current request, or null outside an authenticated request.';
  end if;

  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
    language sql stable
    set search_path = ''
    as $f$
      select nullif(
        coalesce(
          nullif(pg_catalog.current_setting('request.jwt.claim.role', true), ''),
          nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
        ),
        ''
      )
    $f$;
    comment on function auth.role() is
      'The role claim of the current request (anon, authenticated, service_role), or null outside a request.';
  end if;

  -- grant only on a schema this migration owns; Supabase manages its own
  if (select nspowner from pg_catalog.pg_namespace where nspname = 'auth')
     = (select oid from pg_catalog.pg_roles where rolname = current_user) then
    grant usage on schema auth to anon, authenticated, service_role;
    grant execute on function auth.jwt(), auth.uid(), auth.role()
      to anon, authenticated, service_role;
  end if;
end
$$;
