-- 0010_create_guardian_votes.sql
-- Guardian votes, the mesh's consensus: the vertices of a tetrahedron vote on
-- a decision about one of its nodes (quarantine it, for example).
-- The quorum rule is SQL (flowmesh.tally): with E voters (the vertices, less
-- the subject itself) a decision passes once approvals > quorum * E, and is
-- rejected once that can no longer happen; at closes_at an undecided one
-- expires. One vote per vertex. Votes are cast through cast_guardian_vote,
-- which checks who is voting; row-level security keeps outsiders out.

create table if not exists public.guardian_decisions (
  id             bigint generated always as identity,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  action         text not null,
  subject        flowmesh.node_id not null,
  proposed_by    flowmesh.node_id not null,
  quorum         double precision not null default 0.5,
  status         text not null default 'open',
  details        jsonb not null default '{}'::jsonb,
  created_at     timestamptz not null default now(),
  closes_at      timestamptz not null,
  decided_at     timestamptz,
  constraint guardian_decisions_pkey primary key (id, tetrahedron_id),
  constraint guardian_decisions_quorum_check check (quorum > 0 and quorum < 1),
  constraint guardian_decisions_status_check check (status in ('open', 'passed', 'rejected', 'expired')),
  constraint guardian_decisions_action_check check (action ~ '^[a-z][a-z0-9_-]{0,63}$')
);
comment on table public.guardian_decisions is
  'A decision the guardians (vertices) of a tetrahedron vote on, about subject (a node): open until it passes (approvals > quorum x voters), is rejected, or expires at closes_at.';
create unique index if not exists guardian_decisions_tetrahedron_id_action_subject_idx
  on public.guardian_decisions (tetrahedron_id, action, subject) where status = 'open';
create index if not exists guardian_decisions_tetrahedron_id_created_at_idx
  on public.guardian_decisions (tetrahedron_id, created_at desc);

create table if not exists public.guardian_votes (
  decision_id    bigint not null,
  tetrahedron_id uuid not null references public.tetrahedrons (id) on delete cascade,
  voter          flowmesh.node_id not null,
  approve        boolean not null,
  cast_at        timestamptz not null default now(),
  -- with the tetrahedron, so a distributed fleet keeps a decision and its votes on one shard
  constraint guardian_votes_pkey primary key (tetrahedron_id, decision_id, voter),
  constraint guardian_votes_decision_fkey foreign key (tetrahedron_id, decision_id)
    references public.guardian_decisions (tetrahedron_id, id) on delete cascade
);
comment on table public.guardian_votes is 'One vote per vertex (voter) per decision.';
create index if not exists guardian_votes_tetrahedron_id_idx on public.guardian_votes (tetrahedron_id);

alter table public.guardian_decisions enable row level security;
alter table public.guardian_votes enable row level security;
drop policy if exists guardian_decisions_select_authenticated on public.guardian_decisions;
create policy guardian_decisions_select_authenticated on public.guardian_decisions
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
drop policy if exists guardian_votes_select_authenticated on public.guardian_votes;
create policy guardian_votes_select_authenticated on public.guardian_votes
  for select to authenticated
  using (tetrahedron_id in (select flowmesh.member_tetrahedron_ids()));
revoke all on table public.guardian_decisions, public.guardian_votes from anon, authenticated, service_role;
grant select on table public.guardian_decisions, public.guardian_votes to authenticated;
grant all on table public.guardian_decisions, public.guardian_votes to service_role;

-- who may act for a vertex ------------------------------------------------------------------
create or replace function flowmesh.authorize_vertex(t_uuid uuid, vertex text) returns void
language plpgsql stable security definer
set search_path = ''
as $$
begin
  if not exists (select from public.tetrahedron_vertices v
                  where v.tetrahedron_id = t_uuid and v.node_id = vertex) then
    raise exception '% is not a vertex of tetrahedron %', vertex, t_uuid
      using errcode = '42501';
  end if;
  if flowmesh.caller_is_privileged() then
    return;
  end if;
  if not exists (select from public.tetrahedron_vertices v
                  where v.tetrahedron_id = t_uuid and v.node_id = vertex
                    and v.user_id = (select auth.uid())) then
    raise exception 'permission denied: % may not act for vertex %',
      coalesce((select auth.uid())::text, flowmesh.caller()::text), vertex
      using errcode = '42501';
  end if;
end
$$;
comment on function flowmesh.authorize_vertex(uuid, text) is
  'Raises 42501 unless vertex belongs to the tetrahedron and the caller may act for it: a privileged role, or the user who owns that vertex.';

-- the quorum rule ------------------------------------------------------------------------------
create or replace function flowmesh.tally(t_uuid uuid, decision_id bigint) returns public.guardian_decisions
language plpgsql security definer
set search_path = ''
as $$
declare
  d public.guardian_decisions;
  v_voters integer;
  v_yes integer;
  v_no integer;
  v_status text;
begin
  -- by tetrahedron and id, like every statement here: one shard in a distributed fleet
  select * into d from public.guardian_decisions g
   where g.tetrahedron_id = t_uuid and g.id = decision_id for update;
  if d.status <> 'open' then
    return d;
  end if;
  select count(*) into v_voters from public.tetrahedron_vertices v
   where v.tetrahedron_id = d.tetrahedron_id and v.node_id <> d.subject;
  select count(*) filter (where g.approve), count(*) filter (where not g.approve)
    into v_yes, v_no
    from public.guardian_votes g where g.tetrahedron_id = d.tetrahedron_id and g.decision_id = d.id;
  v_status := case
    when v_yes > d.quorum * v_voters then 'passed'
    when v_voters - v_no <= d.quorum * v_voters then 'rejected'  -- approval can no longer pass
    when now() >= d.closes_at then 'expired'
    else 'open'
  end;
  if v_status <> 'open' then
    update public.guardian_decisions g
       set status = v_status, decided_at = now(),
           details = g.details || pg_catalog.jsonb_build_object(
             'voters', v_voters, 'approvals', v_yes, 'rejections', v_no)
     where g.tetrahedron_id = d.tetrahedron_id and g.id = d.id
    returning * into d;
  end if;
  return d;
end
$$;
comment on function flowmesh.tally(uuid, bigint) is
  'The quorum rule: with E voters (vertices less the subject), pass when approvals > quorum x E, reject when approvals can no longer get there, expire at closes_at.';

-- RPCs -------------------------------------------------------------------------------------------
create or replace function public.propose_guardian_decision(
  t_uuid uuid, action text, subject text, proposer text,
  quorum double precision default 0.5, ttl_minutes integer default 60)
returns public.guardian_decisions
language plpgsql security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  d public.guardian_decisions;
begin
  if t_uuid is null or action is null or subject is null or proposer is null then
    raise exception 't_uuid, action, subject and proposer must not be null' using errcode = '22004';
  end if;
  if quorum is null or quorum <= 0 or quorum >= 1 then
    raise exception 'quorum must be between 0 and 1 (exclusive), got %', quorum using errcode = '22023';
  end if;
  if ttl_minutes is null or ttl_minutes < 1 then
    raise exception 'ttl_minutes must be at least 1' using errcode = '22023';
  end if;
  if action !~ '^[a-z][a-z0-9_-]{0,63}$' then
    raise exception 'action must be a lowercase word (a-z, 0-9, _ and -), got %', action
      using errcode = '22023';
  end if;
  perform flowmesh.authorize_vertex(t_uuid, proposer);
  if not exists (select from flowmesh.node_records n where n.tetrahedron_id = t_uuid and n.node_id = subject)
     and not exists (select from public.tetrahedron_vertices v
                      where v.tetrahedron_id = t_uuid and v.node_id = subject) then
    raise exception 'subject % is not a node of tetrahedron %', subject, t_uuid using errcode = '23503';
  end if;
  insert into public.guardian_decisions
         (tetrahedron_id, action, subject, proposed_by, quorum, closes_at)
  values (t_uuid, propose_guardian_decision.action, propose_guardian_decision.subject, proposer,
          propose_guardian_decision.quorum, now() + pg_catalog.make_interval(mins => ttl_minutes))
  on conflict (tetrahedron_id, action, subject) where status = 'open' do nothing
  returning * into d;
  if d.id is null then
    raise exception 'a % decision about % is already open', action, subject using errcode = '23505';
  end if;
  return d;
end
$$;
comment on function public.propose_guardian_decision(uuid, text, text, text, double precision, integer) is
  'Open a decision (e.g. action ''quarantine'') about subject, proposed by a vertex the caller may act for; one open decision per action and subject. Example: select id, status from propose_guardian_decision(''6f1c...''::uuid, ''quarantine'', ''cam-3'', ''pi''); -> (7, open)';

create or replace function public.cast_guardian_vote(
  t_uuid uuid, decision_id bigint, voter text, approve boolean)
returns public.guardian_decisions
language plpgsql security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  d public.guardian_decisions;
begin
  if t_uuid is null or decision_id is null or voter is null or approve is null then
    raise exception 't_uuid, decision_id, voter and approve must not be null' using errcode = '22004';
  end if;
  -- by tetrahedron and id: a distributed fleet finds the decision on one shard
  select * into d from public.guardian_decisions g
   where g.tetrahedron_id = t_uuid and g.id = decision_id;
  if d.id is null then
    raise exception 'decision % does not exist in tetrahedron %', decision_id, t_uuid
      using errcode = '23503';
  end if;
  perform flowmesh.authorize_vertex(d.tetrahedron_id, voter);
  if voter = d.subject then
    raise exception '% may not vote on a decision about itself', voter using errcode = '42501';
  end if;
  d := flowmesh.tally(d.tetrahedron_id, d.id);  -- it may have expired
  if d.status <> 'open' then
    raise exception 'decision % is %', d.id, d.status using errcode = '55000';
  end if;
  begin
    insert into public.guardian_votes (decision_id, tetrahedron_id, voter, approve)
    values (d.id, d.tetrahedron_id, cast_guardian_vote.voter, cast_guardian_vote.approve);
  exception when unique_violation then
    raise exception '% has already voted on decision %', voter, d.id using errcode = '23505';
  end;
  return flowmesh.tally(d.tetrahedron_id, d.id);
end
$$;
comment on function public.cast_guardian_vote(uuid, bigint, text, boolean) is
  'Cast voter''s vote (one per vertex) on decision_id of tetrahedron t_uuid and return the decision as it stands: passed once approvals exceed the quorum. Example: select status from cast_guardian_vote(''6f1c...''::uuid, 7, ''laptop'', true); -> passed';

create or replace function public.close_expired_decisions() returns integer
language sql security definer
set search_path = ''
as $$
  select count(*)::integer from (
    select flowmesh.tally(g.tetrahedron_id, g.id) as d from public.guardian_decisions g
     where g.status = 'open' and g.closes_at <= now()) t
$$;
comment on function public.close_expired_decisions() is
  'Tally every open decision past closes_at (expiring the undecided); returns how many were closed. Run by the schedules.';

revoke all on function flowmesh.authorize_vertex(uuid, text), flowmesh.tally(uuid, bigint) from public, anon;
grant execute on function flowmesh.authorize_vertex(uuid, text), flowmesh.tally(uuid, bigint)
  to authenticated, service_role;
revoke all on function public.propose_guardian_decision(uuid, text, text, text, double precision, integer),
  public.cast_guardian_vote(uuid, bigint, text, boolean) from public, anon;
grant execute on function public.propose_guardian_decision(uuid, text, text, text, double precision, integer),
  public.cast_guardian_vote(uuid, bigint, text, boolean) to authenticated, service_role;
revoke all on function public.close_expired_decisions() from public, anon, authenticated;
grant execute on function public.close_expired_decisions() to service_role;
