"""Hash registry benchmark: ingest, HNSW build, recall and latency of search_hashes.

    python bench/registry.py [--rows 100000] [--queries 200] [--batch-size 500] [--repeat 1]
                             [--ef-search 40,64,100,200] [--m 16] [--ef-construction 64]
                             [--maintenance-work-mem 1GB] [--database-url URL]

Measured in one run, on one server, against the registry's own table:

* ingest: ``register_hashes`` with ``--batch-size`` entries per call, one call
  per transaction, against a raw ``COPY`` of the same rows in transactions of
  the same size (the baseline), into the same table emptied before each
  phase, with the same indexes (its key and b-tree indexes; the HNSW index is
  dropped, and built after the bulk load, as one loads a registry). Goal:
  RPC >= 50% of COPY. Then every batch again: all duplicates.
* the HNSW build (``m``, ``ef_construction``) on the loaded table.
* recall@k of ``search_hashes`` against exact search (the same ordering over
  a sequential scan, index scans off), and single-client latency p50/p99, at
  each ``hnsw.ef_search``; the exact search's latency is the baseline. Goal:
  recall@10 >= 0.95 at p50 <= 5 ms.
* a filtered search (one data type of ten, 10% of the rows): search_hashes,
  which turns on pgvector's iterative index scans for itself
  (``hnsw.iterative_scan = relaxed_order``), against its query run with them
  off: how many of the k results come back, and their recall.
* for every pass, how many calls went through the HNSW index (the planner may
  choose a sequential scan, exact and slow): a pass counts toward the goal
  only if all did.

The data: ``--clusters`` random unit centres in ``--dims`` dimensions, every
vector a centre plus gaussian noise, normalised; the query vectors are drawn
the same way and held out of the table. Seeded, so every run searches the
same vectors. Needs numpy (``pip install -e '.[bench]'``). Without
--database-url a throwaway embedded server is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bench_database, pct, q  # noqa: E402

DATA_TYPES = 10  # the filtered search asks for one of them: 10% of the rows
NODES = 4


def vectors(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(table rows, held-out queries) as vector literals, '[x,y,...]'."""
    try:
        import numpy as np
    except ImportError:
        sys.exit("bench/registry.py needs numpy: pip install -e '.[bench]'")
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dims), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> list[str]:
        out: list[str] = []
        for start in range(0, n, 10_000):  # in chunks: 100,000 x 512 at once is 200 MB per copy
            size = min(10_000, n - start)
            labels = rng.integers(0, args.clusters, size)
            points = centres[labels] + rng.standard_normal((size, args.dims), dtype=np.float32) * (
                args.noise / np.sqrt(args.dims))
            points /= np.linalg.norm(points, axis=1, keepdims=True)
            # six decimals: short literals, and finer than the distances that order the results
            out.extend(json.dumps(row, separators=(",", ":")) for row in np.round(points, 6).tolist())
        return out

    return draw(args.rows), draw(args.queries)


def step(text: str) -> None:
    """Where the run is, on stderr (the figures come at the end, on stdout)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _copy(conn, text: str) -> None:
    """One batch of rows into hash_registry by COPY, in its own transaction."""
    with conn.transaction(), conn.cursor().copy(q("copy_registry")) as cp:
        cp.write(text)


def main() -> None:  # noqa: PLR0915 (one run, step after step)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="vectors in the table")
    ap.add_argument("--indexed-rows", type=int, default=10_000,
                    help="rows of the ingest measured with the HNSW index in place, as agents write")
    ap.add_argument("--dims", type=int, default=512, help="must be the registry's dimension")
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="length of a vector's noise relative to its unit centre")
    ap.add_argument("--queries", type=int, default=200, help="held-out query vectors")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=1, help="ingest phases, interleaved; median reported")
    ap.add_argument("--ef-search", default="40,64,100,200", help="hnsw.ef_search values, comma-separated")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--maintenance-work-mem", default="1GB", help="for the index build")
    ap.add_argument("--recall-goal", type=float, default=0.95)
    ap.add_argument("--p50-goal-ms", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--database-url", help="benchmark this server (its hash registry is emptied!)")
    args = ap.parse_args()
    ef_values = [int(v) for v in args.ef_search.split(",")]

    started = time.perf_counter()
    step(f"generating {args.rows:,} + {args.queries} vectors")
    rows, queries = vectors(args)
    generated_s = time.perf_counter() - started
    hashes = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(args.rows)]
    data_types = [f"type-{i % DATA_TYPES}" for i in range(args.rows)]
    nodes = [f"node-{i % NODES}" for i in range(args.rows)]
    filter_type = "type-0"

    # prepare_threshold=None: no statement is prepared (as through the pooler), so every
    # call is planned for its own vector unless search_hashes caches a plan itself
    with bench_database(args.database_url) as url, \
            psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        version = conn.execute(q("server_version")).fetchone()[0]
        for node in sorted(set(nodes)):
            (tid,) = conn.execute(q("register_registry_node"), (node,)).fetchone()
        pgvector = conn.execute(q("pgvector_version")).fetchone()
        if pgvector is None:
            sys.exit("this server has no pgvector (extension vector): the registry cannot be benchmarked")
        # -- ingest: the RPC against COPY, same rows, same table, same indexes -------------
        batches = [range(i, min(i + args.batch_size, args.rows))
                   for i in range(0, args.rows, args.batch_size)]
        batch_json = [
            "[" + ",".join(f'{{"hash":"{hashes[i]}","data_type":"{data_types[i]}","node":"{nodes[i]}",'
                           f'"embedding":{rows[i]},"confidence":0.9}}' for i in b) + "]"
            for b in batches
        ]
        copy_text = ["".join(f"{tid}\t{hashes[i]}\t{data_types[i]}\t{nodes[i]}\t{rows[i]}\t0.9\t{{}}\t1\n"
                             for i in b) for b in batches]

        def copy_phase():
            for text in copy_text:
                _copy(conn, text)

        def rpc_phase(new: bool = True):
            for text in batch_json:
                (received, inserted, _) = conn.execute(q("register_hashes"), (tid, text)).fetchone()
                assert inserted == (received if new else 0), (received, inserted, new)

        # first as agents write: into the table as the migration made it, its HNSW index
        # kept current row by row, the first --indexed-rows rows
        step(f"ingest with the HNSW index: COPY and register_hashes, {args.indexed_rows} rows")
        indexed_batches = -(-min(args.indexed_rows, args.rows) // args.batch_size)
        indexed: dict[str, float] = {}
        for name, texts, run in (("copy", copy_text, "copy"), ("rpc", batch_json, "rpc")):
            conn.execute(q("truncate_registry"))
            if run == "copy":
                indexed[name] = timed(lambda texts=texts: [_copy(conn, text)
                                                           for text in texts[:indexed_batches]])
            else:
                indexed[name] = timed(lambda texts=texts: [conn.execute(q("register_hashes"), (tid, text))
                                                           for text in texts[:indexed_batches]])
        indexed_rows = min(indexed_batches * args.batch_size, args.rows)
        # then the bulk figures, the index dropped for both and built after the load
        conn.execute(q("truncate_registry"))
        for (index,) in conn.execute(q("registry_hnsw_indexes")).fetchall():
            conn.execute(sql.SQL(q("drop_index")).format(name=sql.Identifier(index)))

        step("ingest: COPY and register_hashes")
        ingest: dict[str, list[float]] = {"copy": [], "rpc": []}
        for _ in range(args.repeat):
            for name, fn in (("copy", copy_phase), ("rpc", rpc_phase)):  # the RPC's rows stay
                conn.execute(q("truncate_registry"))
                ingest[name].append(timed(fn))
                (n,) = conn.execute(q("registry_count")).fetchone()
                assert n == args.rows, (name, n)
        replay_s = timed(lambda: rpc_phase(new=False))  # every entry again, same version: nothing written
        batch_json.clear()  # a gigabyte of text, no longer needed
        copy_text.clear()
        conn.execute(q("vacuum_registry"))

        # -- the HNSW index, built after the bulk load ------------------------------------
        step("building the HNSW index")
        conn.execute(q("set_maintenance_work_mem"), (args.maintenance_work_mem,))
        workers = conn.execute(q("parallel_maintenance_workers")).fetchone()[0]
        build_s = timed(lambda: conn.execute(sql.SQL(q("create_hnsw_index")).format(
            m=sql.Literal(args.m), ef_construction=sql.Literal(args.ef_construction))))
        (index_bytes,) = conn.execute(q("hnsw_index_size")).fetchone()
        conn.execute(q("vacuum_registry"))

        # -- exact search: the ground truth, and the latency without the index ---------------
        def exact(embedding: str, data_type: str | None) -> tuple[list[str], float]:
            params = {"t": tid, "embedding": embedding, "k": args.k, "data_type": data_type}
            with conn.transaction():
                conn.execute(q("no_index_scan"))
                plan = "\n".join(r[0] for r in conn.execute(q("explain_exact_neighbours"), params))
                assert "hash_registry_embedding_bench_idx" not in plan, plan
                start = time.perf_counter()
                found = [r[0] for r in conn.execute(q("exact_neighbours"), params)]
                return found, time.perf_counter() - start

        step("exact search (the ground truth)")
        truth, exact_s, truth_filtered, exact_filtered_s = [], [], [], []
        for embedding in queries:
            found, s = exact(embedding, None)
            truth.append(set(found))
            exact_s.append(s)
            found, s = exact(embedding, filter_type)
            truth_filtered.append(set(found))
            exact_filtered_s.append(s)

        # -- search_hashes through the index at each ef_search -----------------------------
        def index_scans() -> int:
            conn.execute(q("flush_stats"))  # this backend's counts reach the statistics now
            return conn.execute(q("hnsw_index_scans")).fetchone()[0]

        def search(data_type: str | None, query: str = "search_hashes",
                   ) -> tuple[list[float], list[float], list[int], int, int]:
            """recall per query, seconds per call, results per call, calls out of order,
            calls that scanned the HNSW index (the planner may choose a sequential scan)."""
            scans_before = index_scans()
            recalls, seconds, counts, unordered = [], [], [], 0
            truths = truth_filtered if data_type else truth
            for embedding, expected in zip(queries, truths, strict=True):
                params = {"t": tid, "embedding": embedding, "k": args.k, "data_type": data_type}
                start = time.perf_counter()
                found = conn.execute(q(query), params).fetchall()
                seconds.append(time.perf_counter() - start)
                counts.append(len(found))
                recalls.append(len(expected & {h for h, _ in found}) / len(expected))
                distances = [d for _, d in found]
                unordered += distances != sorted(distances)
            return recalls, seconds, counts, unordered, index_scans() - scans_before

        conn.execute(q("set_iterative_scan"), ("off",))
        conn.execute(q("set_ef_search"), (str(max(ef_values)),))
        step("search_hashes at each ef_search")
        search(None)  # warm-up: the index and the table in the caches, as a busy registry has them
        sweep = {}
        for ef in ef_values:
            conn.execute(q("set_ef_search"), (str(ef),))
            sweep[ef] = search(None)

        # a pass counts only if every call went through the index: the planner prefers a
        # sequential scan (exact, slow) where it estimates the index dearer
        reaching = [ef for ef in ef_values if statistics.fmean(sweep[ef][0]) >= args.recall_goal
                    and sweep[ef][4] >= len(queries)]
        chosen = reaching[0] if reaching else max(ef_values)
        conn.execute(q("set_ef_search"), (str(chosen),))
        filtered = {"search_hashes (iterative scan)": search(filter_type)}
        # the same query without iterative scans: what the filter would do to a plain HNSW scan
        filtered["its query, iterative scan off"] = search(filter_type, "index_neighbours")

    # -- figures -----------------------------------------------------------------------------
    copy_rate = args.rows / statistics.median(ingest["copy"])
    rpc_rate = args.rows / statistics.median(ingest["rpc"])
    ms = 1000
    print(f"PostgreSQL {version}, pgvector {pgvector[0]}; {args.rows:,} vectors of {args.dims} dimensions "
          f"in {args.clusters} clusters (noise {args.noise}), {args.queries} held-out queries, k = {args.k}; "
          f"data generated in {generated_s:.1f} s")
    print(f"\ningest, {args.batch_size} rows per transaction, median of {args.repeat}:")
    print(f"  {'COPY (baseline)':<42}{copy_rate:>10,.0f} rows/s")
    print(f"  {'register_hashes':<42}{rpc_rate:>10,.0f} rows/s")
    print(f"  {'register_hashes, replayed (all duplicates)':<42}{args.rows / replay_s:>10,.0f} rows/s")
    ratio = rpc_rate / copy_rate
    print(f"  register_hashes / COPY = {ratio:.1%} (goal >= 50%), the HNSW index built after the load")
    indexed_ratio = indexed["copy"] / indexed["rpc"]
    print(f"  into the table as agents write it (its HNSW index kept current), {indexed_rows:,} rows:")
    print(f"  {'  COPY (baseline)':<42}{indexed_rows / indexed['copy']:>10,.0f} rows/s")
    print(f"  {'  register_hashes':<42}{indexed_rows / indexed['rpc']:>10,.0f} rows/s")
    print(f"    register_hashes / COPY = {indexed_ratio:.1%} (goal >= 50%)")
    print(f"\nHNSW build (m = {args.m}, ef_construction = {args.ef_construction}, maintenance_work_mem "
          f"{args.maintenance_work_mem}, max_parallel_maintenance_workers {workers}): {build_s:.1f} s, "
          f"index {index_bytes / 2**20:,.0f} MB")
    print(f"\nsearch_hashes, single client, recall@{args.k} against exact search:")
    print(f"  {'ef_search':<28}{'recall':>8}{'min':>7}{'< 0.5':>7}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'index scans':>13}")
    print(f"  {'exact (seq scan, baseline)':<28}{1:>8.3f}{1:>7.2f}{0:>7}{pct(exact_s, 50) * ms:>9.2f}"
          f"{pct(exact_s, 99) * ms:>9.2f}{0:>13}")
    for ef, (recalls, seconds, _, _, scans) in sweep.items():
        print(f"  {ef:<28}{statistics.fmean(recalls):>8.3f}{min(recalls):>7.2f}"
              f"{sum(r < 0.5 for r in recalls):>7}"
              f"{pct(seconds, 50) * ms:>9.2f}{pct(seconds, 99) * ms:>9.2f}{scans:>13}")
    print(f"  (min: the worst query's recall; < 0.5: queries that found fewer than half of their {args.k})")
    print(f"\nfiltered: data_type = {filter_type!r} ({1 / DATA_TYPES:.0%} of rows), ef_search {chosen}:")
    print(f"  {'search':<30}{'recall':>8}{'k back':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'index scans':>13}{'unordered':>11}")
    print(f"  {'exact (seq scan, baseline)':<30}{1:>8.3f}{args.k:>8}{pct(exact_filtered_s, 50) * ms:>9.2f}"
          f"{pct(exact_filtered_s, 99) * ms:>9.2f}{0:>13}")
    for mode, (recalls, seconds, counts, unordered, scans) in filtered.items():
        print(f"  {mode:<30}{statistics.fmean(recalls):>8.3f}{statistics.fmean(counts):>8.1f}"
              f"{pct(seconds, 50) * ms:>9.2f}{pct(seconds, 99) * ms:>9.2f}{scans:>13}{unordered:>11}")
    print(f"  (index scans: calls of {len(queries)} that went through the HNSW index, the others "
          f"planned as a sequential scan; unordered: calls whose results were not nearest first)")

    print()
    print(f"ingest: register_hashes / COPY = {ratio:.1%} bulk, index built after (goal >= 50%): "
          f"{'met' if ratio >= 0.5 else 'NOT met'}; {indexed_ratio:.1%} into the indexed table: "
          f"{'met' if indexed_ratio >= 0.5 else 'NOT met'}")
    if reaching:
        p50 = pct(sweep[chosen][1], 50) * ms
        print(f"search: smallest ef_search with recall@{args.k} >= {args.recall_goal} is {chosen}, "
              f"p50 {p50:.2f} ms (goal <= {args.p50_goal_ms} ms): "
              f"{'met' if p50 <= args.p50_goal_ms else 'NOT met'}")
    else:
        print(f"search: no ef_search of {ef_values} reaches recall@{args.k} >= {args.recall_goal} "
              "through the index: NOT met")
    recalls, _, counts, _, scans = filtered["search_hashes (iterative scan)"]
    print(f"filtered: iterative scan returns {statistics.fmean(counts):.1f} of k = {args.k}, recall "
          f"{statistics.fmean(recalls):.3f}, {scans} of {len(queries)} calls through the index: "
          f"{'met' if min(counts) == args.k and scans >= len(queries) else 'NOT met'} (k results)")


if __name__ == "__main__":
    main()
