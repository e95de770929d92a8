#!/usr/bin/env python
"""Federation benchmark (issue #6), index search: QIDO-RS latency of the platform's central
study index on PostgreSQL, side by side with Orthanc's own QIDO-RS on the same studies.

A benchmark, not a test. It

1. generates N synthetic studies (default 100,000; deterministic for a seed), one small valid
   DICOM instance each (8x8 pixels: the study-level index is what is measured), spread over
   20,000 patients (hanzi + pinyin names), 5 hospitals, 10 years of StudyDate and the
   modalities CT/CR/DX/MR/US;
2. indexes them on the platform, on a throw-away PostgreSQL database (created and dropped with
   psql, migrated with manage.py): every file is parsed by the ingest's own parser
   (exchange/studies/dicomfile.parse) and its Study/Series/Instance rows carry the fields the
   ingest writes (exchange/studies/services._study_defaults), but they are bulk-inserted, with
   one Patient per synthetic person and one PatientIdentifier per person and hospital instead
   of the patient index's matcher, no pixel files and no per-study audit events; then ANALYZE;
3. uploads the same files to a real Orthanc with its DICOMweb plugin (loopback, temporary
   storage, default SQLite index) through its REST API, in parallel;
4. serves the platform with gunicorn and sends, one request at a time, the searches a clinician
   makes to both, interleaved, K times each with varied values (limit=50): by PatientID, by
   PatientName prefix (``WANG*``), by StudyDate range + ModalitiesInStudy, by AccessionNumber.
   The platform is asked as a clinician of one hospital, so the consent policy filter and the
   QUERY audit event are part of every request (PS3.18 §10.6 QIDO-RS);
5. checks a few queries per kind with limit=1000 on both and reports differences in the
   matches, and prints p50/p95/p99 per kind for both and the ratio.

    .venv/bin/python bench/federation.py [--studies 100000] [--patients 20000] [--queries 200]
                                         [--rounds 2] [--explain] [--database-url URL]

Targets (issue #6): index search p95 under 50 ms at 100,000 studies, and no slower than
Orthanc's QIDO-RS on the same data. Only 127.0.0.1 is used; every server, the database and the
temporary directory are removed on exit (also on Ctrl-C). Results: docs/benchmarks-federation.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's folder comes first on sys.path ("audit" would be bench/audit.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from bench.audit import django_setup, percentile  # noqa: E402
from bench.ingest import Orthanc, Platform, find_plugin, log, machine  # noqa: E402
from fixtures.province import GIVEN_FEMALE, GIVEN_MALE, SURNAMES, given_pinyin  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/bench_federation"
CLINICIAN = "bench_fed_clinician"
# (code, name, PatientID prefix): the prefixes keep local ids unique across hospitals, so a
# PatientID search means the same on the platform and on one Orthanc holding every study.
HOSPITALS = [("PROV", "Provincial People's Hospital", "PR"), ("CITYA", "City Hospital A", "CA"),
             ("CITYB", "City Hospital B", "CB"), ("CNTYA", "County Hospital A", "NA"),
             ("CNTYB", "County Hospital B", "NB")]
MODALITIES = {"CT": 30, "CR": 20, "DX": 20, "MR": 15, "US": 15}  # share of studies, %
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "CR": "1.2.840.10008.5.1.4.1.1.1",
             "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MR": "1.2.840.10008.5.1.4.1.1.4",
             "US": "1.2.840.10008.5.1.4.1.1.6.1"}
DESCRIPTION = {"CT": ("CT 胸部平扫", "CHEST"), "CR": ("CR 胸部正位", "CHEST"), "DX": ("DR 胸部正位", "CHEST"),
               "MR": ("MR 头颅平扫", "HEAD"), "US": ("US 腹部", "ABDOMEN")}
# Searched surnames: the first 20 of fixtures/province.py, whose pinyin has one reading. For the
# polyphonic ones (单 Shan, 区 Ou ...) the platform also matches the dictionary reading (Dan, Qu)
# that it derives from the hanzi, which Orthanc cannot know: results would differ by design.
QUERY_SURNAMES = [pinyin for _, pinyin in SURNAMES[:20]]
FIRST_DAY = datetime.date(2016, 1, 1)
DAYS = (datetime.date(2025, 12, 31) - FIRST_DAY).days + 1  # ten years
KINDS = ["PatientID", "PatientName prefix", "StudyDate range + ModalitiesInStudy", "AccessionNumber"]
LIMIT = 50


# --- synthetic studies -----------------------------------------------------------------------


@dataclass(frozen=True)
class SynthStudy:
    index: int
    person: int
    hospital: int  # index into HOSPITALS
    local_id: str
    name_alphabetic: str
    name_ideographic: str
    birth_date: datetime.date
    sex: str
    study_uid: str
    study_date: datetime.date
    study_time: str
    accession: str
    modality: str


def uid(seed: int, *parts: object) -> str:
    """Deterministic 2.25 UID from a hash of the parts (PS3.5 B.2)."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big") or 1)


def synthetic_studies(n: int, patients: int, seed: int) -> list[SynthStudy]:
    """N studies of ``patients`` persons; each person is registered at a home hospital and one
    in five also at a second one, where a third of their studies are made."""
    rng = random.Random(seed)
    pinyin = {g: given_pinyin(g) for g in GIVEN_MALE + GIVEN_FEMALE}
    persons = []
    for _ in range(patients):
        sex = rng.choice("MF")
        family, family_pinyin = rng.choice(SURNAMES)
        given = rng.choice(GIVEN_MALE if sex == "M" else GIVEN_FEMALE)
        birth = datetime.date(1940, 1, 1) + datetime.timedelta(days=rng.randrange(80 * 365))
        home = rng.randrange(len(HOSPITALS))
        second = rng.randrange(len(HOSPITALS)) if rng.random() < 0.2 else home
        persons.append((f"{family_pinyin}^{pinyin[given]}", f"{family}^{given}", sex, birth, home, second))
    modalities, weights = list(MODALITIES), list(MODALITIES.values())
    studies = []
    for s in range(n):
        p = rng.randrange(patients)
        alphabetic, ideographic, sex, birth, home, second = persons[p]
        h = second if rng.random() < 0.3 else home
        prefix = HOSPITALS[h][2]
        study_date = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
        studies.append(SynthStudy(
            index=s, person=p, hospital=h,
            # 7919 is prime to 10**8: distinct persons get distinct ids at every hospital.
            local_id=f"{prefix}{(p * 7919 + h * 104729) % 10**8:08d}",
            name_alphabetic=alphabetic, name_ideographic=ideographic, birth_date=birth, sex=sex,
            study_uid=uid(seed, "study", s), study_date=study_date,
            study_time=f"{rng.randrange(7, 18):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
            accession=f"{prefix}A{study_date:%y}{s:07d}", modality=rng.choices(modalities, weights)[0]))
    return studies


def dataset(st: SynthStudy, seed: int):
    """One small but valid Part 10 instance of the study (8x8 MONOCHROME2, Explicit VR LE)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_uid = uid(seed, "sop", st.index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[st.modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS[st.modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = f"{st.study_date:%Y%m%d}"
    ds.StudyTime = ds.SeriesTime = st.study_time
    ds.AccessionNumber = st.accession
    ds.Modality = st.modality
    ds.InstitutionName = HOSPITALS[st.hospital][1]
    ds.ReferringPhysicianName = "Chen^Jing=陈^静"
    ds.StudyDescription, ds.BodyPartExamined = DESCRIPTION[st.modality]
    ds.PatientName = f"{st.name_alphabetic}={st.name_ideographic}"
    ds.PatientID = st.local_id
    ds.IssuerOfPatientID = f"{HOSPITALS[st.hospital][0]}-MRN"
    ds.PatientBirthDate = f"{st.birth_date:%Y%m%d}"
    ds.PatientSex = st.sex
    ds.StudyInstanceUID = st.study_uid
    ds.SeriesInstanceUID = uid(seed, "series", st.index)
    ds.StudyID = st.accession[-8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes((st.index + i) % 256 for i in range(64))
    return ds


def write_and_parse(job: tuple[str, int, list[SynthStudy]]) -> list[tuple[str, int, str, object]]:
    """Pool worker: write the files of a chunk and parse each back with the ingest's parser."""
    from exchange.studies.dicomfile import parse

    folder, seed, chunk = job
    os.makedirs(folder, exist_ok=True)
    out = []
    for st in chunk:
        path = os.path.join(folder, f"{st.index:07d}.dcm")
        dataset(st, seed).save_as(path, enforce_file_format=True)
        with open(path, "rb") as fp:
            digest = hashlib.sha256(fp.read()).hexdigest()
        out.append((path, os.path.getsize(path), digest, parse(path)))
    return out


def generate(studies: list[SynthStudy], folder: Path, seed: int, env: dict) -> list[tuple[str, int, str, object]]:
    ctx = multiprocessing.get_context("spawn")
    jobs = [(str(folder / f"{i // 1000:04d}"), seed, studies[i:i + 1000]) for i in range(0, len(studies), 1000)]
    out = []
    with ctx.Pool(os.cpu_count() or 2, initializer=django_setup, initargs=(env,)) as pool:
        for n, part in enumerate(pool.imap(write_and_parse, jobs), 1):
            out.extend(part)
            if n % 20 == 0:
                log(f"generated {len(out)} files")
    return out


# --- loading ---------------------------------------------------------------------------------


def load_platform(studies: list[SynthStudy], files: list) -> dict:
    """Bulk-insert the index rows the ingest would write (see the module docstring)."""
    from django.db import connection, transaction

    from exchange.mpi.models import Patient, PatientIdentifier
    from exchange.studies.models import Instance, Series, Study
    from exchange.studies.names import search_key
    from exchange.studies.services import _study_defaults
    from hospitals.services import hospital_create

    t0 = time.perf_counter()
    hospitals = [hospital_create(code=code, name=name, authority=f"{code}-MRN") for code, name, _ in HOSPITALS]
    with transaction.atomic():
        people = {}
        for st in studies:
            people.setdefault(st.person, st)
        patients = Patient.objects.bulk_create(
            [Patient(name_alphabetic=st.name_alphabetic, name_ideographic=st.name_ideographic,
                     birth_date=st.birth_date, sex=st.sex) for st in people.values()], batch_size=5000)
        patient_of = dict(zip(people, patients))
        regs = {}
        for st, (_, _, _, parsed) in zip(studies, files):
            regs.setdefault((st.person, st.hospital), parsed)
        identifiers = PatientIdentifier.objects.bulk_create(
            [PatientIdentifier(patient=patient_of[person], hospital=hospitals[h], local_id=p.patient_id,
                               issuer=p.issuer_of_patient_id, name_alphabetic=p.name_alphabetic,
                               name_ideographic=p.name_ideographic, name_phonetic=p.name_phonetic,
                               name_search=search_key(p.name_alphabetic, p.name_ideographic, p.name_phonetic),
                               birth_date=p.birth_date, sex=p.sex)
             for (person, h), p in regs.items()], batch_size=5000)
        identifier_of = dict(zip(regs, identifiers))
        log(f"platform: {len(patients)} patients, {len(identifiers)} identifiers")
        for start in range(0, len(studies), 5000):
            part = list(zip(studies[start:start + 5000], files[start:start + 5000]))
            rows = Study.objects.bulk_create([
                Study(hospital=hospitals[st.hospital], study_instance_uid=p.study_instance_uid, num_series=1, num_instances=1, total_bytes=size,
                      modalities=p.series["modality"], **_study_defaults(p, identifier_of[(st.person, st.hospital)]))
                for st, (_, size, _, p) in part])
            series = Series.objects.bulk_create([
                Series(study=row, series_instance_uid=p.series_instance_uid, num_instances=1, total_bytes=size, **p.series)
                for row, (_, (_, size, _, p)) in zip(rows, part)])
            Instance.objects.bulk_create([
                Instance(series=s, sop_instance_uid=p.sop_instance_uid, sop_class_uid=p.sop_class_uid,
                         transfer_syntax_uid=p.transfer_syntax_uid, storage_key=digest, size=size, **p.instance)
                for s, (_, (_, size, digest, p)) in zip(series, part)])
            if (start // 5000) % 4 == 3:
                log(f"platform: {start + len(part)} studies indexed")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    seconds = time.perf_counter() - t0
    log(f"platform: {len(studies)} studies bulk-indexed and analysed in {seconds:.0f} s")
    return {"seconds": seconds, "patients": len(patients), "identifiers": len(identifiers)}


def load_orthanc(orthanc: Orthanc, files: list, threads: int = 8) -> dict:
    """POST every file to Orthanc's REST API (/instances), ``threads`` at a time."""
    paths = iter([f[0] for f in files])
    lock = threading.Lock()
    failures: list[str] = []
    done = [0]

    def worker():
        session = requests.Session()
        while True:
            with lock:
                path = next(paths, None)
            if path is None:
                return
            with open(path, "rb") as fp:
                body = fp.read()
            r = session.post(orthanc.url + "/instances", data=body, timeout=120,
                             headers={"Content-Type": "application/dicom"})
            with lock:
                done[0] += 1
                if r.status_code != 200:
                    failures.append(f"HTTP {r.status_code}")
                if done[0] % 20000 == 0:
                    log(f"orthanc: {done[0]} uploaded")

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - t0
    stored = orthanc.stored_count()
    log(f"orthanc: {stored} instances stored in {seconds:.0f} s ({len(failures)} failures)")
    return {"seconds": seconds, "stored": stored, "failures": failures[:5], "n_failures": len(failures)}


# --- queries ---------------------------------------------------------------------------------


def query_values(kind: str, studies: list[SynthStudy], rng: random.Random, k: int) -> list[dict]:
    out = []
    for _ in range(k):
        st = rng.choice(studies)
        if kind == "PatientID":
            params = {"PatientID": st.local_id}
        elif kind == "PatientName prefix":
            params = {"PatientName": rng.choice(QUERY_SURNAMES).upper() + "*"}
        elif kind == "StudyDate range + ModalitiesInStudy":
            start = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS - 30))
            end = start + datetime.timedelta(days=30)
            params = {"StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}", "ModalitiesInStudy": rng.choice(list(MODALITIES))}
        else:
            params = {"AccessionNumber": st.accession}
        out.append(params)
    return out


def study_uids(response: requests.Response) -> list[str]:
    return [item["0020000D"]["Value"][0] for item in response.json()]


class Target:
    def __init__(self, name: str, url: str, headers: dict):
        self.name, self.url, self.headers = name, url, headers
        self.session = requests.Session()

    def get(self, params: dict, limit: int = LIMIT) -> requests.Response:
        # "*" and "^" unescaped (RFC 3986 allows them in a query): Orthanc 1.10.1's DICOMweb
        # plugin 1.7 does not percent-decode QIDO values, so "WANG%2A" would match nothing there.
        query = "&".join(f"{k}={urllib.parse.quote(v, safe='*^')}" for k, v in {**params, "limit": str(limit)}.items())
        r = self.session.get(f"{self.url}?{query}", headers=self.headers, timeout=60)
        if r.status_code not in (200, 204):
            raise RuntimeError(f"{self.name}: HTTP {r.status_code} for a {sorted(params)} query: {r.text[:200]}")
        return r


def answer(r: requests.Response) -> list:
    return r.json() if r.status_code == 200 and r.content else []


def sanity(targets: list[Target], queries: dict[str, list[dict]], per_kind: int) -> list[dict]:
    """The same query with limit=1000 on both: same number of matches, same studies?"""
    rows = []
    for kind in KINDS:
        for params in queries[kind][:per_kind]:
            uids = [sorted(item["0020000D"]["Value"][0] for item in answer(t.get(params, 1000))) for t in targets]
            counts = [len(u) for u in uids]
            same = uids[0] == uids[1] if max(counts) < 1000 else None  # capped: count only
            rows.append({"kind": kind, "params": params, "counts": counts,
                         "agree": counts[0] == counts[1] and same is not False})
            if not rows[-1]["agree"]:
                log(f"sanity: {kind} {params}: platform {counts[0]} vs Orthanc {counts[1]} matches"
                    + (", other studies" if counts[0] == counts[1] else ""))
    log(f"sanity: {sum(r['agree'] for r in rows)} of {len(rows)} queries agree (limit=1000)")
    return rows


def measure(targets: list[Target], queries: dict[str, list[dict]], warmup: int = 10) -> dict:
    """Sequential requests, interleaved per query and alternating which system goes first, so
    drift (caches, autovacuum, the neighbours' load) hits both alike."""
    out = {}
    for kind in KINDS:
        for params in queries[kind][:warmup]:
            for t in targets:
                t.get(params)
        times: dict[str, list[float]] = {t.name: [] for t in targets}
        results: dict[str, list[int]] = {t.name: [] for t in targets}
        for i, params in enumerate(queries[kind]):
            for t in (targets if i % 2 == 0 else targets[::-1]):
                t0 = time.perf_counter()
                r = t.get(params)
                body = answer(r)
                times[t.name].append(time.perf_counter() - t0)
                results[t.name].append(len(body))
        out[kind] = {
            name: {"p50": percentile(v, 0.50) * 1000, "p95": percentile(v, 0.95) * 1000,
                   "p99": percentile(v, 0.99) * 1000, "mean_results": sum(results[name]) / len(results[name])}
            for name, v in times.items()}
        p, o = (out[kind][t.name] for t in targets)
        log(f"{kind}: platform p50/p95 {p['p50']:.1f}/{p['p95']:.1f} ms, Orthanc {o['p50']:.1f}/{o['p95']:.1f} ms")
    return out


def explain(queries: dict[str, list[dict]]) -> dict[str, str]:
    """EXPLAIN ANALYZE of the SQL the QIDO-RS view runs for the first query of each kind."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.http import QueryDict

    from consent import policy
    from exchange.dicomweb import query

    user = get_user_model().objects.select_related("profile").get(username=CLINICIAN)
    plans = {}
    for kind in KINDS:
        qd = QueryDict(mutable=True)
        qd.update({**queries[kind][0], "limit": str(LIMIT)})
        q = query.parse(qd)
        # The same queryset as exchange/dicomweb/views.py StudiesView.get.
        qs = policy.visible_studies(user).filter(query.study_filter(q.match)).order_by("-study_date", "-id")
        qs = qs[q.offset:q.offset + q.limit]
        plans[kind] = f"-- {kind}\n{qs.query}\n{qs.explain(analyze=True, buffers=True)}"
    connection.close()
    return plans


# --- report ----------------------------------------------------------------------------------


def print_report(info: dict, args, load: dict, checks: list[dict], rounds: list[dict]) -> None:
    print()
    print("=" * 104)
    print(f"Federation benchmark, index search - {info['date']}")
    print(f"machine : {info['nproc']} CPU ({info['cpu']}), {info['ram']} RAM, Linux {info['kernel']}, "
          f"load average before the queries {info['load_before']}")
    print(f"python  : {info['python']}; platform database: {info['database']}")
    print(f"orthanc : {info.get('orthanc', '-')}")
    print(f"command : {' '.join(sys.argv)}")
    print(f"data    : {args.studies} studies (1 instance each), {load['platform']['patients']} patients, "
          f"{load['platform']['identifiers']} identifiers, {len(HOSPITALS)} hospitals; platform asked as a clinician "
          f"of {HOSPITALS[0][0]}, CONSENT_DEFAULT={args.consent_default}")
    print(f"loading : platform bulk index {load['platform']['seconds']:.0f} s; Orthanc REST upload "
          f"{load['orthanc']['seconds']:.0f} s, {load['orthanc']['stored']} stored")
    print("-" * 104)
    bad = [c for c in checks if not c["agree"]]
    print(f"sanity (limit=1000, {len(checks)} queries): {len(checks) - len(bad)} agree, {len(bad)} differ")
    for c in bad:
        print(f"  differ: {c['kind']} {c['params']} platform {c['counts'][0]} vs Orthanc {c['counts'][1]}")
    for n, res in enumerate(rounds, 1):
        print("-" * 104)
        print(f"round {n}: {args.queries} queries per kind, limit={LIMIT}, sequential, interleaved   (ms)")
        print(f"{'query':<38}{'platform p50/p95/p99':>24}{'Orthanc p50/p95/p99':>24}{'ratio p95':>10}{'results':>8}")
        for kind in KINDS:
            p, o = res[kind]["platform"], res[kind]["Orthanc"]
            print(f"{kind:<38}{p['p50']:>8.1f}{p['p95']:>8.1f}{p['p99']:>8.1f}{o['p50']:>8.1f}{o['p95']:>8.1f}"
                  f"{o['p99']:>8.1f}{p['p95'] / o['p95']:>10.2f}{p['mean_results']:>8.1f}")
        worst = max(res[k]["platform"]["p95"] for k in KINDS)
        slower = [k for k in KINDS if res[k]["platform"]["p95"] > res[k]["Orthanc"]["p95"]]
        print(f"target p95 < 50 ms: {'MET' if worst < 50 else 'NOT MET'} (worst {worst:.1f} ms); "
              f"no slower than Orthanc (p95): {'MET' if not slower else 'NOT MET for ' + ', '.join(slower)}")
    print("=" * 104)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100_000, help="synthetic studies (default 100,000)")
    ap.add_argument("--patients", type=int, default=20_000, help="synthetic patients (default 20,000)")
    ap.add_argument("--queries", type=int, default=200, help="queries per kind and round (default 200)")
    ap.add_argument("--rounds", type=int, default=2, help="measurement rounds on the same data (default 2)")
    ap.add_argument("--sanity", type=int, default=5, help="queries per kind compared with limit=1000 (default 5)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--consent-default", choices=["opt-out", "opt-in"], default="opt-out",
                    help="CONSENT_DEFAULT of the platform (default opt-out: the clinician may see every study, "
                         "so both systems answer the same; opt-in: own hospital only, matches differ)")
    ap.add_argument("--database-url", default=DEFAULT_DB, help=f"PostgreSQL database, created and dropped (default {DEFAULT_DB})")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the view's SQL per query kind")
    ap.add_argument("--tmp", help="parent of the temporary directory (default: system temp)")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    args = ap.parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        ap.error("--database-url must be a postgres:// URL")
    if not (100 <= args.studies <= 1_000_000 and 10 <= args.patients <= args.studies and args.queries >= 10):
        ap.error("out-of-range --studies/--patients/--queries")
    plugin = find_plugin()
    if not shutil.which("Orthanc") or not plugin:
        ap.error("Orthanc and its DICOMweb plugin are needed (Debian: apt-get install orthanc orthanc-dicomweb)")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = Path(tempfile.mkdtemp(prefix="bench-federation-", dir=args.tmp))
    platform: Platform | None = None
    orthanc: Orthanc | None = None
    try:
        platform = Platform(work, args.database_url, args.workers, args.threads)
        platform.env["CONSENT_DEFAULT"] = args.consent_default
        info = machine(platform.db_description())
        platform.setup()  # drop/create the database, migrate, a hospital and its ingest account
        env = {k: v for k, v in platform.env.items() if k not in os.environ or os.environ[k] != v}
        env["LOG_LEVEL"] = "ERROR"
        django_setup(env)

        t0 = time.perf_counter()
        studies = synthetic_studies(args.studies, args.patients, args.seed)
        files = generate(studies, work / "files", args.seed, env)
        log(f"{len(files)} files written and parsed in {time.perf_counter() - t0:.0f} s")

        orthanc = Orthanc(work, plugin)
        orthanc.start()
        info["orthanc"] = f"Orthanc {orthanc.version()}, plugin {plugin}, SQLite index, default settings"
        load: dict = {}
        uploader = threading.Thread(target=lambda: load.__setitem__("orthanc", load_orthanc(orthanc, files)), daemon=True)
        uploader.start()
        load["platform"] = load_platform(studies, files)

        from django.contrib.auth import get_user_model
        from django.db import connection
        from rest_framework.authtoken.models import Token

        from hospitals.models import Hospital
        from hospitals.services import account_create

        account_create(username=CLINICIAN, role="clinician", password=secrets.token_urlsafe(18),
                       hospital=Hospital.objects.get(code=HOSPITALS[0][0]))
        token = Token.objects.create(user=get_user_model().objects.get(username=CLINICIAN)).key
        connection.close()
        uploader.join()
        if load["orthanc"]["stored"] != len(files):
            raise RuntimeError(f"Orthanc stored {load['orthanc']['stored']} of {len(files)} instances")
        del files

        platform.start()
        targets = [Target("platform", platform.url + "/dicomweb/studies", {"Authorization": f"Token {token}",
                                                                            "Accept": "application/dicom+json"}),
                   Target("Orthanc", orthanc.url + "/dicom-web/studies", {"Accept": "application/dicom+json"})]
        rng = random.Random(args.seed + 1)
        rounds, checks = [], []
        for n in range(args.rounds):
            queries = {kind: query_values(kind, studies, rng, args.queries) for kind in KINDS}
            if n == 0:
                checks = sanity(targets, queries, args.sanity)
                info["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
                if args.explain:
                    for plan in explain(queries).values():
                        print(plan, flush=True)
            log(f"round {n + 1}: load average {os.getloadavg()[0]:.2f}")
            rounds.append(measure(targets, queries))
        print_report(info, args, load, checks, rounds)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "load": load, "sanity": checks,
                                                   "rounds": rounds}, indent=2, default=str))
        return 0
    finally:
        if orthanc is not None:
            orthanc.stop()
        if platform is not None:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # noqa: BLE001 - Django may not be set up yet
                pass
            platform.stop()  # gunicorn, then DROP DATABASE
        shutil.rmtree(work, ignore_errors=True)
        log(f"removed {work}")


if __name__ == "__main__":
    sys.exit(main())
