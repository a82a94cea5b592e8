-- 0010_create_heartbeat_retention.sql
-- Retention for the heartbeat log: maintain_heartbeat_partitions creates the
-- daily partitions of mesh_heartbeats ahead and drops those past the
-- retention period (default 30 days). The daily schedule runs it.

create or replace function public.maintain_heartbeat_partitions(
  retention interval default '30 days', days_ahead integer default 7)
returns table (created integer, dropped integer, oldest date, newest date)
language plpgsql security definer
set search_path = ''
as $$
declare
  v_created integer := 0;
  v_dropped integer := 0;
  v_today date := (now() at time zone 'UTC')::date;
  v_cutoff date;
  v_part record;
begin
  if retention is null or retention < interval '1 day' then
    raise exception 'retention must be at least 1 day, got %', retention using errcode = '22023';
  end if;
  if days_ahead is null or days_ahead < 1 or days_ahead > 366 then
    raise exception 'days_ahead must be between 1 and 366, got %', days_ahead using errcode = '22023';
  end if;
  for i in 0 .. days_ahead loop
    if flowmesh.ensure_heartbeat_partition(v_today + i) then
      v_created := v_created + 1;
    end if;
  end loop;
  -- a partition goes once its whole day is older than the retention
  v_cutoff := ((now() - retention) at time zone 'UTC')::date;
  for v_part in
    select c.relname
      from pg_catalog.pg_inherits i
      join pg_catalog.pg_class c on c.oid = i.inhrelid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where i.inhparent = 'public.mesh_heartbeats'::pg_catalog.regclass
       and n.nspname = 'flowmesh_partitions'
       and c.relname ~ '^mesh_heartbeats_[0-9]{8}$'
       and pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD') < v_cutoff
  loop
    execute pg_catalog.format('drop table flowmesh_partitions.%I', v_part.relname);
    v_dropped := v_dropped + 1;
  end loop;
  return query
    select v_created, v_dropped,
           min(pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD')),
           max(pg_catalog.to_date(pg_catalog.right(c.relname, 8), 'YYYYMMDD'))
      from pg_catalog.pg_inherits i
      join pg_catalog.pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'public.mesh_heartbeats'::pg_catalog.regclass;
end
$$;
comment on function public.maintain_heartbeat_partitions(interval, integer) is
  'Create mesh_heartbeats partitions for today and days_ahead days, drop those whose day is older than retention (default 30 days); returns counts and the range kept. Run daily by the schedules. Example: select * from maintain_heartbeat_partitions(''30 days''); -> (1, 1, 2026-10-22, 2026-11-28)';

revoke all on function public.maintain_heartbeat_partitions(interval, integer) from public, anon, authenticated;
grant execute on function public.maintain_heartbeat_partitions(interval, integer) to service_role;
