#!/usr/bin/env python
"""Federation benchmark, live archives (issue #6): fan-out latency and the retrieve proxy.

A benchmark, not a test. On a throw-away PostgreSQL database, with three real Orthanc servers
(tests/federation/orthanc.py) holding a synthetic province (fixtures/province.py), onboarded
through the platform's own services (PPH: DICOMweb with basic auth, CITY1: DICOMweb behind a
delaying TCP relay, CNTY: DIMSE only), it measures:

1. Fan-out: exchange.federation.search.federated_search(refresh=True) for one patient registered
   at all three hospitals, in process, --runs times per scenario: all archives fast; CITY1 slow
   (--slow seconds before each answer); CITY1 hanging (never answers in time; --timeout cap).
   p50/p95 of the whole call and of each archive's part.
2. Retrieve proxy: a --ct-slices instance CT (--ct-size pixels square, 16-bit) held by PPH's
   Orthanc, retrieved as a whole study by WADO-RS through the platform (gunicorn) with an empty
   cache (cold), again (cached), and straight from Orthanc's own WADO-RS, --proxy-runs times each,
   interleaved: time to first byte and MB/s. Target (issue #6): cached >= 80 % of Orthanc direct.
   The same CT is also held by CNTY's Orthanc (DIMSE only): "cold, C-GET" retrieves it through
   the platform as CNTY's clinician, which the proxy fetches by C-GET.

    .venv/bin/python bench/federation_live.py [--runs 20] [--proxy-runs 3] [--ct-slices 300] [--json out.json]

Only 127.0.0.1; the database, the Orthanc servers and the temporary directory go on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from bench.audit import django_setup, percentile  # noqa: E402
from bench.ingest import Platform, log, machine  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/bench_federation_live"
SEED = 2026
PASSWORD = "bench-" + secrets.token_urlsafe(12)
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DelayRelay:
    """A TCP relay to an upstream port that holds each answer back by ``delay`` seconds: the
    upstream's first bytes after each request wait that long (a slow or, with a long delay,
    hanging archive). Threads only; stopped with the process."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay = 0.0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        try:
            upstream = socket.create_connection(self.upstream, timeout=60)
        except OSError:
            client.close()
            return
        asked = threading.Event()

        def pump(src, dst, is_request):
            try:
                while data := src.recv(65536):
                    if is_request:
                        asked.set()
                    elif asked.is_set():
                        asked.clear()
                        time.sleep(self.delay)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        pump(upstream, client, False)


def build_archives(work: Path, ct_slices: int, ct_size: int):
    """Three Orthanc servers with the province's studies, plus one big CT study at PPH."""
    from fixtures.province import generate_province, write_study
    from tests.federation.orthanc import OrthancServer

    province = generate_province(seed=SEED, persons=8, ct_slices=3, ct_size=64)
    servers = {
        "PPH": OrthancServer(work / "pph", aet="PPH_PACS", username="platform", password="s3cret-pass"),
        "CITY1": OrthancServer(work / "city1", aet="CITY1_PACS"),
        "CNTY": OrthancServer(work / "cnty", aet="CNTY_PACS"),
    }
    for server in servers.values():
        server.start()
    files: dict[str, list[Path]] = {code: [] for code in servers}
    for n, spec in enumerate(province.studies):
        code = spec.registration.hospital_code
        files[code] += write_study(spec, work / "files" / code / str(n), seed=SEED, ct_size=64)
    for code, server in servers.items():
        server.upload(files[code])
    # The big CT: a PPH registration's CT with ct_slices instances.
    big = None
    for seed in range(SEED, SEED + 50):
        p = generate_province(seed=seed, persons=4, ct_slices=ct_slices, ct_size=ct_size)
        big = next((s for s in p.studies if s.modality == "CT" and s.registration.hospital_code == "PPH"), None)
        if big is not None:
            break
    log(f"writing the {big.n_instances}-instance CT ({ct_size}x{ct_size})")
    paths = write_study(big, work / "files" / "big", seed=seed, ct_size=ct_size)
    servers["PPH"].upload(paths)
    # The same CT also at CNTY, reached over DIMSE only: the proxy's C-GET path.
    servers["CNTY"].upload(paths)
    size = sum(p.stat().st_size for p in paths)
    shutil.rmtree(work / "files", ignore_errors=True)
    return province, servers, big, size


def onboard(servers, relay: DelayRelay):
    from exchange.studies.models import Study
    from hospitals.models import EndpointStatus
    from hospitals.services import account_create, endpoint_create, endpoint_go_live, endpoint_sync_start, hospital_create

    hospitals = {
        "PPH": hospital_create(code="PPH", name="Provincial People's Hospital", authority="PPH-MRN", ae_title="PPH_GW"),
        "CITY1": hospital_create(code="CITY1", name="First City Hospital", authority="CITY1-MRN", ae_title="CITY1_GW"),
        "CNTY": hospital_create(code="CNTY", name="County Hospital", authority="CNTY-MRN", ae_title="CNTY_GW"),
    }
    endpoints = {
        "PPH": endpoint_create(hospital=hospitals["PPH"], kind="dicomweb", name="PACS", qido_url=servers["PPH"].dicomweb,
                               auth="basic", username="platform", secret="s3cret-pass", timeout=30),
        "CITY1": endpoint_create(hospital=hospitals["CITY1"], kind="dicomweb", name="PACS",
                                 qido_url=f"http://127.0.0.1:{relay.port}/dicom-web", timeout=30),
        "CNTY": endpoint_create(hospital=hospitals["CNTY"], kind="dimse", name="PACS", remote_ae_title="CNTY_PACS",
                                host="127.0.0.1", port=servers["CNTY"].dicom_port, timeout=30),
    }
    for code, endpoint in endpoints.items():
        log(f"sync {code}")
        job = endpoint_sync_start(endpoint=endpoint)  # Celery eager: runs here
        job.refresh_from_db()
        if job.status != "done":
            raise RuntimeError(f"sync of {code} ended {job.status}: {job.message}")
        endpoint_go_live(endpoint=endpoint)
        assert endpoint.status == EndpointStatus.LIVE
    clinician = account_create(username="bench_dr_pph", role="clinician", password=PASSWORD, hospital=hospitals["PPH"])
    account_create(username="bench_dr_cnty", role="clinician", password=PASSWORD, hospital=hospitals["CNTY"])
    log(f"indexed {Study.objects.count()} studies")
    return hospitals, endpoints, clinician


def measure_fanout(province, hospitals, clinician, relay: DelayRelay, runs: int, slow: float, timeout: float) -> list[dict]:
    from exchange.federation.search import federated_search
    from exchange.mpi.models import PatientIdentifier

    by_person: dict[int, dict] = {}
    for spec in province.studies:
        if spec.registration.ric:
            by_person.setdefault(spec.registration.person_id, {})[spec.registration.hospital_code] = spec.registration
    regs = next(r for r in by_person.values() if set(r) == {"PPH", "CITY1", "CNTY"})
    patient = PatientIdentifier.objects.get(hospital=hospitals["PPH"], local_id=regs["PPH"].local_id).patient
    scenarios = [("all three fast", 0.0), (f"CITY1 slow ({slow:.1f} s)", slow), ("CITY1 hanging", 3600.0)]
    rows = []
    for label, delay in scenarios:
        relay.delay = delay
        federated_search(clinician, patient, refresh=True, timeout=timeout, channel="bench")  # warm-up
        total: list[float] = []
        per: dict[str, list[float]] = {}
        statuses: dict[str, set] = {}
        for _ in range(runs):
            t = time.perf_counter()
            result = federated_search(clinician, patient, refresh=True, timeout=timeout, channel="bench")
            total.append(time.perf_counter() - t)
            for a in result.archives:
                per.setdefault(a.hospital_code, []).append(a.elapsed_ms / 1000)
                statuses.setdefault(a.hospital_code, set()).add(a.status)
        row = {"scenario": label, "runs": runs, "timeout_s": timeout, "p50_ms": percentile(total, 0.5) * 1000,
               "p95_ms": percentile(total, 0.95) * 1000,
               "archives": {code: {"p50_ms": percentile(v, 0.5) * 1000, "status": sorted(statuses[code])}
                            for code, v in sorted(per.items())},
               "studies": len(result.studies)}
        rows.append(row)
        log(f"fan-out, {label}: p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms")
    relay.delay = 0.0
    return rows


def timed_get(url: str, headers: dict, auth=None) -> dict:
    import requests

    t0 = time.perf_counter()
    with requests.get(url, headers=headers, auth=auth, stream=True, timeout=600) as r:
        r.raise_for_status()
        first = None
        size = 0
        for chunk in r.iter_content(256 * 1024):
            if first is None:
                first = time.perf_counter()
            size += len(chunk)
    wall = time.perf_counter() - t0
    return {"ttfb_ms": (first - t0) * 1000, "seconds": wall, "bytes": size, "mb_s": size / wall / 1e6}


def measure_proxy(platform: Platform, token: str, server, big, runs: int, dimse_token: str) -> list[dict]:
    from exchange.federation import cache

    platform_url = f"{platform.url}/dicomweb/studies/{big.study_uid}"
    direct_url = f"{server.dicomweb}/studies/{big.study_uid}"
    ours = {"Accept": ACCEPT_DICOM, "Authorization": f"Token {token}"}
    dimse = {"Accept": ACCEPT_DICOM, "Authorization": f"Token {dimse_token}"}  # CNTY's clinician: CNTY's copy
    theirs = {"Accept": ACCEPT_DICOM}
    timed_get(direct_url, theirs, server.auth)  # Orthanc's own caches warm for every mode alike
    results: dict[str, list[dict]] = {"platform, cold cache": [], "platform, cached": [], "Orthanc direct": [],
                                      "platform, cold, C-GET": []}
    for i in range(runs):
        cache.clear()
        results["platform, cold cache"].append(timed_get(platform_url, ours))
        results["platform, cached"].append(timed_get(platform_url, ours))
        results["Orthanc direct"].append(timed_get(direct_url, theirs, server.auth))
        cache.clear()
        results["platform, cold, C-GET"].append(timed_get(platform_url, dimse))
        log(f"proxy run {i + 1}: " + ", ".join(f"{k} {v[-1]['mb_s']:.0f} MB/s" for k, v in results.items()))
    rows = []
    for label, runs_ in results.items():
        rows.append({"mode": label, "runs": len(runs_), "bytes": runs_[0]["bytes"],
                     "ttfb_ms": percentile([r["ttfb_ms"] for r in runs_], 0.5),
                     "mb_s": percentile([r["mb_s"] for r in runs_], 0.5),
                     "seconds": percentile([r["seconds"] for r in runs_], 0.5)})
    return rows


def print_report(info, args, fanout, proxy, ct_bytes, n_instances) -> None:
    print()
    print("=" * 100)
    print(f"Federation benchmark (live archives) - {info['date']}")
    print(f"machine : {info['nproc']} CPU ({info['cpu']}), {info['ram']} RAM, Linux {info['kernel']}")
    print(f"python  : {info['python']}; database: {info['database']}")
    print(f"command : {' '.join(sys.argv)}")
    print("-" * 100)
    print(f"fan-out: federated_search(refresh=True), one patient at 3 hospitals, timeout cap {args.timeout:.1f} s, "
          f"{args.runs} runs each")
    print(f"{'scenario':<24}{'p50 ms':>9}{'p95 ms':>9}   per archive p50 ms (status)")
    for r in fanout:
        parts = "  ".join(f"{c} {a['p50_ms']:.0f} ({'/'.join(a['status'])})" for c, a in r["archives"].items())
        print(f"{r['scenario']:<24}{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}   {parts}")
    print("-" * 100)
    print(f"retrieve proxy: WADO-RS whole study, {n_instances} instances, {ct_bytes / 1e6:.0f} MB, "
          f"{args.proxy_runs} runs each (median)")
    print(f"{'mode':<24}{'TTFB ms':>9}{'MB/s':>9}{'seconds':>9}")
    for r in proxy:
        print(f"{r['mode']:<24}{r['ttfb_ms']:>9.1f}{r['mb_s']:>9.1f}{r['seconds']:>9.2f}")
    direct = next(r for r in proxy if r["mode"] == "Orthanc direct")
    cached = next(r for r in proxy if r["mode"] == "platform, cached")
    ratio = cached["mb_s"] / direct["mb_s"]
    print(f"cached proxy / Orthanc direct: {ratio:.2f} (target >= 0.80: {'MET' if ratio >= 0.8 else 'NOT MET'})")
    print("=" * 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL database, created and dropped (default {DEFAULT_DB})")
    ap.add_argument("--runs", type=int, default=20, help="federated searches per scenario (default 20)")
    ap.add_argument("--slow", type=float, default=0.5, help="seconds the slow archive holds each answer (default 0.5)")
    ap.add_argument("--timeout", type=float, default=2.0, help="per-archive deadline cap of the searches (default 2)")
    ap.add_argument("--ct-slices", type=int, default=300, help="instances of the proxied CT (default 300)")
    ap.add_argument("--ct-size", type=int, default=512, help="rows = columns of the proxied CT (default 512)")
    ap.add_argument("--proxy-runs", type=int, default=3, help="retrieves per proxy mode (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    args = ap.parse_args()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    work = Path(tempfile.mkdtemp(prefix="bench-federation-live-"))
    platform, servers = None, {}
    try:
        platform = Platform(work, args.database_url, workers=args.workers, threads=4)
        info = machine(platform.db_description())
        platform.setup()
        env = {k: v for k, v in platform.env.items() if k not in os.environ or os.environ[k] != v}
        env["LOG_LEVEL"] = "ERROR"
        env["EXCHANGE_ENCRYPTION_KEYS"] = os.environ.get("EXCHANGE_ENCRYPTION_KEYS") or _fernet_key()
        platform.env["EXCHANGE_ENCRYPTION_KEYS"] = env["EXCHANGE_ENCRYPTION_KEYS"]
        django_setup(env)
        province, servers, big, ct_bytes = build_archives(work / "orthanc", args.ct_slices, args.ct_size)
        relay = DelayRelay(servers["CITY1"].http_port)
        hospitals, endpoints, clinician = onboard(servers, relay)
        from django.db import connection
        from rest_framework.authtoken.models import Token

        token = Token.objects.get_or_create(user=clinician)[0].key
        from django.contrib.auth import get_user_model

        dimse_token = Token.objects.get_or_create(user=get_user_model().objects.get(username="bench_dr_cnty"))[0].key
        fanout = measure_fanout(province, hospitals, clinician, relay, args.runs, args.slow, args.timeout)
        connection.close()
        platform.start()
        proxy = measure_proxy(platform, token, servers["PPH"], big, args.proxy_runs, dimse_token)
        print_report(info, args, fanout, proxy, ct_bytes, big.n_instances)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "fanout": fanout, "proxy": proxy,
                                                   "ct_bytes": ct_bytes}, indent=2, default=str))
        return 0
    finally:
        if platform is not None:
            platform.stop()
        for server in servers.values():
            server.stop()
        if platform is not None and platform.pg_db:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # Django may not be set up yet
                pass
            try:
                platform._psql(f'DROP DATABASE IF EXISTS "{platform.pg_db}"')
            except Exception as exc:  # noqa: BLE001 - report and go on removing files
                log(f"could not drop database {platform.pg_db}: {exc}")
        shutil.rmtree(work, ignore_errors=True)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


if __name__ == "__main__":
    sys.exit(main())
