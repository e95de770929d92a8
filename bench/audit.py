#!/usr/bin/env python
"""Audit benchmark: audit.record throughput on PostgreSQL, and the latency auditing adds to a read.

A benchmark, not a test. On a throw-away PostgreSQL database (created and dropped with psql,
migrated with manage.py) it measures:

1. events/s with 1 and with 8 concurrent writers: processes, each with its own connection, each
   event its own transaction through audit.record (as an action that audits itself does), in
   each chain mode (AUDIT_CHAIN_MODE inline; sequencer sealing on commit; sequencer with a
   dedicated audit_sealer process); then what was left unsealed is sealed and timed, and the
   whole chain is verified (audit.verify.verify_chain) and OK/BROKEN printed;
2. the latency auditing adds to a study read: WADO-RS metadata, WADO-RS rendered and the study
   page of a seeded study through the Django test client, in this process, with audit.record
   on and replaced by a no-op (interleaved request by request), p50/p95 of each.

    .venv/bin/python bench/audit.py [--database-url postgres://postgres@127.0.0.1:5432/bench_audit]
                                    [--seconds 5] [--writers 1,8] [--requests 200] [--json out.json]

Targets (issue #4): >= 2,000 events/s with 8 writers; < 5 ms added at p95.
Only 127.0.0.1; the database and the temporary directory are removed on exit (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder comes first on sys.path and "audit" would be this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from bench.ingest import Platform, log, machine  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/bench_audit"
CLINICIAN = "bench_clinician"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def django_setup(env: dict) -> None:
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings"
    import django

    django.setup()


# --- 1. writers ------------------------------------------------------------------------------


PLAIN_TABLE = "bench_plain_insert"


def writer(env: dict, number: int, ready, go, seconds: float, max_events: int, out, plain: bool = False) -> None:
    """One writer process: its own connection, one transaction per event, until time is up.

    ``plain``: the baseline without the chain, one INSERT of a hashed row per transaction into a
    table with no head row, to show what the database does when writers do not queue.
    """
    django_setup(env)
    import hashlib

    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from audit import record
    from audit.models import Event
    from exchange.studies.models import Study

    actor = get_user_model().objects.select_related("profile__hospital").get(username=CLINICIAN)
    study = Study.objects.select_related("patient").first()
    connection.ensure_connection()
    latencies = []
    n = 0
    ready.put(number)
    go.wait()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < max_events and time.perf_counter() < deadline:
        t = time.perf_counter()
        details = {"path": f"/bench/{number}/{n}", "writer": number}
        with transaction.atomic():
            if plain:
                payload = json.dumps(details, sort_keys=True)
                with connection.cursor() as cursor:
                    cursor.execute(f"INSERT INTO {PLAIN_TABLE} (at, payload, hash) VALUES (now(), %s, %s)",
                                   [payload, hashlib.sha256(payload.encode()).hexdigest()])
            else:
                record(Event.INSTANCES_ACCESSED, actor, study=study, purpose="treatment", basis="own_hospital",
                       details=details)
        latencies.append(time.perf_counter() - t)
        n += 1
    wall = time.perf_counter() - t0
    connection.close()
    out.put({"writer": number, "events": n, "wall": wall, "latencies": latencies})


# How events are chained (docs/decisions/0012-audit-sequencer.md): label -> environment.
CHAIN_MODES = {
    "inline": {"AUDIT_CHAIN_MODE": "inline"},
    "sequencer": {"AUDIT_CHAIN_MODE": "sequencer", "AUDIT_SEAL_ON_COMMIT": "1"},
    "sealer": {"AUDIT_CHAIN_MODE": "sequencer", "AUDIT_SEAL_ON_COMMIT": "0"},
    "deferred": {"AUDIT_CHAIN_MODE": "sequencer", "AUDIT_SEAL_ON_COMMIT": "0"},
}
MODE_LABELS = {
    "inline": "record, inline chain",
    "sequencer": "record, seal on commit",
    "sealer": "record + audit_sealer",
    "deferred": "record, sealed after run",
}


def start_sealer(env: dict):
    """The dedicated sealer process of the "sealer" mode (manage.py audit_sealer)."""
    import subprocess

    return subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "audit_sealer", "--interval", "0.05"],
                            env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL)


def drain() -> tuple[int, float]:
    """Seal whatever the run left unsealed; (events left, seconds to seal them)."""
    from audit.services import seal, unsealed_summary

    left, _ = unsealed_summary()
    t = time.perf_counter()
    seal(wait=True)
    return left, time.perf_counter() - t


def run_writers(env: dict, count: int, seconds: float, max_events: int, plain: bool = False,
                mode: str = "inline") -> dict:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter and connection per writer
    env = {**env, **CHAIN_MODES[mode]}
    sealer = start_sealer(env) if mode == "sealer" and not plain else None
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=writer, args=(env, i, ready, go, seconds, max_events, out, plain)) for i in range(count)]
    for p in procs:
        p.start()
    for _ in procs:  # every writer has imported Django and connected: start them together
        ready.get(timeout=120)
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    if sealer is not None:
        time.sleep(0.5)  # its last round
        sealer.terminate()
        sealer.wait(timeout=30)
    left, drain_s = (0, 0.0) if plain else drain()
    events = sum(r["events"] for r in results)
    wall = max(r["wall"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "mode": "plain INSERT (baseline)" if plain else MODE_LABELS[mode],
        "chain_mode": None if plain else mode,
        "unsealed_after_run": left,
        "drain_s": drain_s,
        "writers": count,
        "events": events,
        "wall": wall,
        "events_per_s": events / wall,
        "commit_p50_ms": percentile(latencies, 0.50) * 1000,
        "commit_p95_ms": percentile(latencies, 0.95) * 1000,
    }


# --- 2. latency added to a read --------------------------------------------------------------


def seed(ingest_token: str) -> dict:
    """A clinician of the bench hospital and one stowed CT study (512x512, 3 instances)."""
    from rest_framework.test import APIClient

    from exchange.studies.models import Series, Study
    from hospitals.models import Hospital
    from hospitals.services import account_create
    from tests.dicom import ct_dataset, multipart, to_bytes

    account_create(username=CLINICIAN, role="clinician", password=secrets.token_urlsafe(18),
                   hospital=Hospital.objects.get(code="BENCH"))
    first = ct_dataset(patient_id="BENCH001", size=512, instance_number=1)
    more = [ct_dataset(patient_id="BENCH001", size=512, instance_number=n, study_uid=first.StudyInstanceUID,
                       series_uid=first.SeriesInstanceUID) for n in (2, 3)]
    body, ctype = multipart([to_bytes(d) for d in [first, *more]])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ingest_token}")
    response = client.generic("POST", "/dicomweb/studies", body, content_type=ctype)
    if response.status_code != 200:
        raise RuntimeError(f"seeding STOW failed: {response.status_code} {response.content[:300]!r}")
    study = Study.objects.get(study_instance_uid=first.StudyInstanceUID)
    return {"study": study, "series": Series.objects.get(study=study), "first": first}


def measure_reads(data: dict, requests: int) -> list[dict]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    import audit.services

    user = get_user_model().objects.get(username=CLINICIAN)
    token, _ = Token.objects.get_or_create(user=user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    page = Client()
    page.force_login(user)
    ds = data["first"]
    instance = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")
    reads = [
        ("WADO-RS study metadata (3 instances)", api, f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata", {}),
        ("WADO-RS rendered JPEG 512x512", api, f"{instance}/rendered", {"HTTP_ACCEPT": "image/jpeg"}),
        ("study page", page, f"/studies/{data['study'].pk}/", {}),
    ]
    real_record = audit.services.record

    def no_audit(*args, **kwargs):
        return None

    results = []
    for label, client, path, headers in reads:
        for _ in range(10):  # warm caches and connections
            assert client.get(path, **headers).status_code == 200
        timings: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(requests):
            # Interleaved, alternating order: drift (caches, autovacuum) hits both modes alike.
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                audit.services.record = real_record if mode == "on" else no_audit
                try:
                    t = time.perf_counter()
                    response = client.get(path, **headers)
                    if response.streaming:
                        b"".join(response.streaming_content)
                    timings[mode].append(time.perf_counter() - t)
                finally:
                    audit.services.record = real_record
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status_code}")
        row = {"read": label, "requests": requests}
        for mode in ("on", "off"):
            row[f"{mode}_p50_ms"] = percentile(timings[mode], 0.50) * 1000
            row[f"{mode}_p95_ms"] = percentile(timings[mode], 0.95) * 1000
        row["added_p50_ms"] = row["on_p50_ms"] - row["off_p50_ms"]
        row["added_p95_ms"] = row["on_p95_ms"] - row["off_p95_ms"]
        results.append(row)
        log(f"{label}: p50 {row['on_p50_ms']:.2f} vs {row['off_p50_ms']:.2f} ms, "
            f"p95 {row['on_p95_ms']:.2f} vs {row['off_p95_ms']:.2f} ms (audit on vs off)")
    return results


# --- the run ---------------------------------------------------------------------------------


def print_report(info: dict, args, writers: list[dict], verify: str, reads: list[dict]) -> None:
    print()
    print("=" * 96)
    print(f"Audit benchmark - {info['date']}")
    print(f"machine : {info['nproc']} CPU ({info['cpu']}), {info['ram']} RAM, Linux {info['kernel']}")
    print(f"python  : {info['python']}; database: {info['database']}")
    print(f"command : {' '.join(sys.argv)}")
    print(f"writers : processes, one connection each, one transaction per audit.record; "
          f"synchronous_commit={args.synchronous_commit}")
    print("-" * 96)
    print(f"{'mode':<26}{'writers':>8} {'events':>9} {'seconds':>8} {'events/s':>10} {'commit p50 ms':>14} "
          f"{'commit p95 ms':>14} {'unsealed at end':>16}")
    for w in writers:
        print(f"{w['mode']:<26}{w['writers']:>8} {w['events']:>9} {w['wall']:>8.1f} {w['events_per_s']:>10.0f} "
              f"{w['commit_p50_ms']:>14.2f} {w['commit_p95_ms']:>14.2f} "
              f"{w['unsealed_after_run']:>7} ({w['drain_s']:.2f} s)")
    for w in writers:
        if w["chain_mode"] == "deferred" and w["drain_s"]:
            print(f"sealing the backlog of the deferred run ({w['writers']} writers): "
                  f"{w['unsealed_after_run']} events in {w['drain_s']:.2f} s = "
                  f"{w['unsealed_after_run'] / w['drain_s']:.0f} events/s")
    print(f"chain after the runs: {verify}")
    for w in writers:
        if w["writers"] == 8 and w["chain_mode"]:
            print(f"target >= 2,000 events/s with 8 writers, {w['mode']}: "
                  f"{'MET' if w['events_per_s'] >= 2000 else 'NOT MET'}")
    print("-" * 96)
    print(f"{'read (' + str(args.requests) + ' requests each mode)':<40} {'p50 on/off (ms)':>18} {'p95 on/off (ms)':>18} "
          f"{'added p50':>9} {'added p95':>9}")
    for r in reads:
        print(f"{r['read']:<40} {r['on_p50_ms']:>8.2f}/{r['off_p50_ms']:<9.2f} {r['on_p95_ms']:>8.2f}/{r['off_p95_ms']:<9.2f} "
              f"{r['added_p50_ms']:>9.2f} {r['added_p95_ms']:>9.2f}")
    if reads:
        worst = max(r["added_p95_ms"] for r in reads)
        print(f"target < 5 ms added at p95: {'MET' if worst < 5 else 'NOT MET'} (worst {worst:.2f} ms)")
    print("=" * 96)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL database, created and dropped (default {DEFAULT_DB})")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each writer run (default 5)")
    ap.add_argument("--events", type=int, default=10**9, help="stop each writer after this many events")
    ap.add_argument("--writers", default="1,8", help="writer counts to run (default 1,8)")
    ap.add_argument("--requests", type=int, default=200, help="requests per read and mode (default 200)")
    ap.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                    help="experiment: PostgreSQL synchronous_commit of the writers' sessions (default on, as shipped)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run the writers with a plain INSERT per transaction (no chain, no head row)")
    ap.add_argument("--modes", default="inline,sequencer,sealer,deferred",
                    help="chain modes for the writer runs: inline, sequencer (seal on commit), sealer "
                         "(a dedicated audit_sealer process), deferred (nothing seals during the run; the "
                         "backlog is sealed and timed after it: the sealer's own rate) (default all four)")
    ap.add_argument("--read-mode", choices=sorted(CHAIN_MODES), default="sealer",
                    help="chain mode of the read-latency runs (default sealer: PostgreSQL's default, the "
                         "request only inserts; sealing is the beat task's or audit_sealer's work)")
    ap.add_argument("--skip-reads", action="store_true", help="only the writer runs")
    ap.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    args = ap.parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        ap.error("--database-url must be a postgres:// URL")
    counts = [int(c) for c in args.writers.split(",")]

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    platform = None
    try:
        platform = Platform(work, args.database_url, workers=1, threads=1)
        info = machine(platform.db_description())
        platform.setup()  # drop/create the database, migrate, a hospital and its ingest account
        env = {k: v for k, v in platform.env.items() if k not in os.environ or os.environ[k] != v}
        env["LOG_LEVEL"] = "ERROR"
        django_setup({**env, **CHAIN_MODES[args.read_mode]})
        from django.db import connection

        data = seed(platform.token)
        connection.close()

        writer_env = dict(env)
        if args.synchronous_commit == "off":
            # What-if experiment: a crash may lose the last commits (the action and its audit row
            # together, never one without the other), but each commit no longer waits for fsync.
            writer_env["PGOPTIONS"] = (os.environ.get("PGOPTIONS", "") + " -c synchronous_commit=off").strip()
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {PLAIN_TABLE} (id bigserial PRIMARY KEY, at timestamptz, payload jsonb, hash text)")
        connection.close()
        writers = []
        runs = [(False, m) for m in args.modes.split(",")] + ([(True, "inline")] if args.baseline else [])
        for plain, mode in runs:
            for count in counts:
                log(f"{count} writer(s), {args.seconds:.0f} s, {'plain INSERT baseline' if plain else MODE_LABELS[mode]}")
                writers.append(run_writers(writer_env, count, args.seconds, args.events, plain, mode))
                log(f"{count} writer(s): {writers[-1]['events_per_s']:.0f} events/s")

        from audit.verify import verify_chain

        t = time.perf_counter()
        result = verify_chain()
        verify = f"{result} ({time.perf_counter() - t:.1f} s to verify)"
        log(f"verify: {verify}")

        reads = [] if args.skip_reads else measure_reads(data, args.requests)
        connection.close()
        print_report(info, args, writers, verify, reads)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "writers": writers,
                                                   "verify": verify, "reads": reads}, indent=2, default=str))
        return 0 if result.ok else 1
    finally:
        if platform is not None and platform.pg_db and not args.keep_db:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # Django may not be set up yet
                pass
            try:
                platform._psql(f'DROP DATABASE IF EXISTS "{platform.pg_db}"')
                log(f"dropped database {platform.pg_db}")
            except Exception as exc:  # noqa: BLE001 - report and go on removing files
                log(f"could not drop database {platform.pg_db}: {exc}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
