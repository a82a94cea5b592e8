-- The outbox's statements (SQLite), loaded by name like flowmesh/queries.sql.
-- Each block starts with "-- name: <name>"; parameters are SQLite's :name.

-- name: create_meta
create table if not exists meta (key text primary key, value integer not null);

-- name: create_entries
-- What waits to be shipped: heartbeats, mesh events and hash registry entries (kind),
-- oldest seq first.
create table if not exists entries (
  seq         integer primary key,
  tetrahedron text    not null,
  src         text    not null,
  role        text,
  at          real    not null,
  payload     text    not null,
  kind        text    not null default 'heartbeat'
);

-- name: create_dead_letters
-- Entries the database refused as bad data, with its error.
create table if not exists dead_letters (
  seq         integer primary key,
  tetrahedron text    not null,
  src         text    not null,
  role        text,
  at          real    not null,
  payload     text    not null,
  kind        text    not null default 'heartbeat',
  sqlstate    text,
  error       text    not null,
  failed_at   real    not null
);

-- name: table_exists
select 1 from sqlite_master where type = 'table' and name = :name;

-- name: table_columns
select name from pragma_table_info(:name);

-- name: rename_heartbeats_to_entries
-- Outboxes written before mesh events shared the queue called it heartbeats.
alter table heartbeats rename to entries;

-- name: add_entries_kind
alter table entries add column kind text not null default 'heartbeat';

-- name: add_dead_letters_kind
alter table dead_letters add column kind text not null default 'heartbeat';

-- name: init_next_seq
-- A new outbox starts its counter at the current time in microseconds.
insert or ignore into meta (key, value) values ('next_seq', :start);

-- name: next_seq
select value from meta where key = 'next_seq';

-- name: set_next_seq
update meta set value = :value where key = 'next_seq';

-- name: insert_entry
insert into entries (seq, tetrahedron, src, role, at, payload, kind)
values (:seq, :tetrahedron, :src, :role, :at, :payload, :kind);

-- name: oldest_entries
select seq, tetrahedron, src, role, at, payload, kind from entries order by seq limit :limit;

-- name: delete_entry
delete from entries where seq = :seq;

-- name: retime_entry
update entries set at = :at where seq = :seq;

-- name: insert_dead_letter
insert or replace into dead_letters
       (seq, tetrahedron, src, role, at, payload, kind, sqlstate, error, failed_at)
values (:seq, :tetrahedron, :src, :role, :at, :payload, :kind, :sqlstate, :error, :failed_at);

-- name: count_entries
select count(*) from entries;

-- name: count_entries_by_kind
-- The queue's depth by kind (heartbeat, event, hash), for the agent's /health.
select kind, count(*) from entries group by kind;

-- name: dead_letters
select seq, src, sqlstate, error from dead_letters order by seq;

-- name: journal_wal
pragma journal_mode = wal;

-- name: synchronous_full
pragma synchronous = full;

-- name: begin_immediate
begin immediate;

-- name: commit
commit;

-- name: rollback
rollback;
