#!/usr/bin/env python
"""Ingest benchmark: STOW-RS throughput and memory of the platform, side by side with Orthanc.

A benchmark, not a test: it starts real servers (gunicorn; optionally Orthanc with its DICOMweb
plugin) on loopback ports, in throw-away directories, sends them the same synthetic CT instances
with parallel STOW-RS clients, then one very large STOW-RS request, and prints a table.

    .venv/bin/python bench/ingest.py [--instances N] [--clients C] [--batch K] [--size 512]
                                     [--big-gb 1.0] [--database-url URL] [--no-orthanc]

Every server it starts and every directory it creates is removed again on exit (try/finally,
also on Ctrl-C). Only 127.0.0.1 is used. See bench/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.province import generate_province, study_datasets  # noqa: E402

VENV_BIN = Path(sys.executable).parent
MB = 1_000_000
HOSPITAL = "BENCH"
INGEST_USER = "bench_ingest"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={}'
PLUGIN_CANDIDATES = [
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes and /proc ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes ({} if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fp:
            fields = fp.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fp:
                ppid = int(fp.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return sorted(kids)


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of a process we own (clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fp:
            fp.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Polls VmRSS of a server's processes every 50 ms; keeps per-process maxima for a phase."""

    def __init__(self, main_pid: int, workers: bool, interval: float = 0.05):
        super().__init__(daemon=True)
        self.main_pid = main_pid
        self.workers = workers  # gunicorn: measure the master's children; Orthanc: itself
        self.interval = interval
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self.peak: dict[int, int] = {}
        self.master_peak = 0
        self.trace: list[tuple[float, int]] = []  # (time, max worker RSS) for the current phase
        self._pids: list[int] = []
        self._pids_at = 0.0

    def pids(self) -> list[int]:
        if not self.workers:
            return [self.main_pid]
        now = time.monotonic()
        if now - self._pids_at > 1.0 or not self._pids:
            self._pids = children_of(self.main_pid)
            self._pids_at = now
        return self._pids

    def new_phase(self) -> None:
        with self._lock:
            self.peak = {}
            self.master_peak = 0
            self.trace = []
        for pid in self.pids():
            reset_peak(pid)

    def snapshot(self) -> dict:
        with self._lock:
            hwm = {pid: proc_status(pid).get("VmHWM", 0) for pid in self.pids()}
            return {
                "max_worker_rss": max(self.peak.values(), default=0),
                "sum_worker_rss": sum(self.peak.values()),
                "max_worker_hwm": max(hwm.values(), default=0),
                "master_rss": self.master_peak,
                "trace": list(self.trace),
            }

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(pid) for pid in self.pids())

    def run(self) -> None:
        while not self._stop_evt.is_set():
            values = {pid: proc_status(pid).get("VmRSS", 0) for pid in self.pids()}
            master = proc_status(self.main_pid).get("VmRSS", 0) if self.workers else 0
            with self._lock:
                for pid, rss in values.items():
                    self.peak[pid] = max(self.peak.get(pid, 0), rss)
                self.master_peak = max(self.master_peak, master)
                if values:
                    self.trace.append((time.monotonic(), max(values.values())))
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=2)


def stop_process(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping {name} (pid {proc.pid})")
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the master and its workers
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_http(url: str, proc: subprocess.Popen, timeout: float, ok=(200,), **kw) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            r = requests.get(url, timeout=2, **kw)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s ({last})")


# --- synthetic data --------------------------------------------------------------------------


def generate_files(n: int, size: int, folder: Path, seed: int = 2026) -> list[Path]:
    """N synthetic CT instances (distinct SOP UIDs), from as many CT studies as needed."""
    slices = 50
    persons = 12
    for _ in range(20):
        province = generate_province(seed, persons=persons, ct_slices=slices, ct_size=size)
        cts = [s for s in province.studies if s.modality == "CT"]
        if sum(s.n_instances for s in cts) >= n:
            break
        persons *= 2
    else:
        raise RuntimeError("could not make enough CT studies")
    paths: list[Path] = []
    for study in cts:
        for ds in study_datasets(study, seed=seed, ct_size=size):
            path = folder / f"{len(paths):06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            if len(paths) >= n:
                return paths
    return paths


def fixed_uid(prefix: str, number: int) -> str:
    """A UID whose last component is always 39 digits (no leading zero): fixed width."""
    return f"{prefix}.{10**38 + number}"


class BigTemplate:
    """One serialised CT instance split into a header (with fixed-width UID slots) and the
    pixel bytes; instance i is the header with its own SOP Instance UID + the same pixels."""

    def __init__(self, size: int, seed: int = 2026):
        from io import BytesIO

        province = generate_province(seed, persons=12, ct_slices=2, ct_size=size)
        study = next(s for s in province.studies if s.modality == "CT")
        ds = next(study_datasets(study, seed=seed, ct_size=size))
        self.run_id = secrets.randbelow(10**12)
        self.placeholder = fixed_uid("2.25", 0)
        ds.file_meta.MediaStorageSOPInstanceUID = self.placeholder
        ds.SOPInstanceUID = self.placeholder
        ds.StudyInstanceUID = fixed_uid("2.25", 10**37 + self.run_id)
        ds.SeriesInstanceUID = fixed_uid("2.25", 2 * 10**37 + self.run_id)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        pixels = bytes(ds.PixelData)
        assert data.endswith(pixels)
        self.header = data[: len(data) - len(pixels)]
        self.pixels = pixels
        ph = self.placeholder.encode()
        self.slots = []
        start = 0
        while (i := self.header.find(ph, start)) >= 0:
            self.slots.append(i)
            start = i + len(ph)
        assert len(self.slots) == 2, self.slots  # file meta + data set
        self.instance_size = len(data)

    def instance(self, i: int) -> list[bytes]:
        uid = fixed_uid("2.25", 3 * 10**37 + self.run_id * 10**7 + i).encode()
        assert len(uid) == len(self.placeholder)
        head = bytearray(self.header)
        for slot in self.slots:
            head[slot : slot + len(uid)] = uid
        return [bytes(head), self.pixels]


# --- multipart bodies ------------------------------------------------------------------------


class MultipartBody:
    """An iterable multipart/related body with a known length (so requests sends Content-Length
    rather than chunked encoding) that reads its parts lazily: nothing large is held in memory."""

    def __init__(self, parts: list, boundary: str):
        # parts: list of (size, producer) where producer() yields the part's bytes
        self.parts = parts
        self.boundary = boundary
        self._head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self._close = f"--{boundary}--\r\n".encode()
        self.sent = 0
        self.length = sum(len(self._head) + size + 2 for size, _ in parts) + len(self._close)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _, producer in self.parts:
            yield self._head
            for chunk in producer():
                self.sent += len(chunk)
                yield chunk
            yield b"\r\n"
        yield self._close

    @property
    def content_type(self) -> str:
        return STOW_TYPE.format(self.boundary)


def file_producer(path: Path, chunk: int = 256 * 1024):
    def produce():
        with open(path, "rb") as fp:
            while data := fp.read(chunk):
                yield data

    return produce


def files_body(paths: list[Path]) -> MultipartBody:
    return MultipartBody([(p.stat().st_size, file_producer(p)) for p in paths], secrets.token_hex(16))


def big_body(template: BigTemplate, count: int) -> MultipartBody:
    parts = [(template.instance_size, (lambda i=i: iter(template.instance(i)))) for i in range(count)]
    return MultipartBody(parts, secrets.token_hex(16))


# --- sending ---------------------------------------------------------------------------------


@dataclass
class SendResult:
    wall: float = 0.0
    requests: int = 0
    ok_requests: int = 0
    instances_acked: int = 0
    failures: list = field(default_factory=list)
    latencies: list = field(default_factory=list)


def _stow_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, list):  # not expected, but be lenient
        body = body[0] if body else {}
    return body if isinstance(body, dict) else {}


def count_acked(response: requests.Response) -> int:
    return len((_stow_body(response).get("00081199") or {}).get("Value") or [])


def failure_reasons(response: requests.Response) -> list[str]:
    """'0xCODE comment' of each Failed SOP Sequence item (PS3.18 Table 10.5.3-1)."""
    out = []
    for item in (_stow_body(response).get("00081198") or {}).get("Value") or []:
        code = ((item.get("00081197") or {}).get("Value") or [0])[0]
        comment = ((item.get("00000902") or {}).get("Value") or [""])[0]
        out.append(f"0x{int(code):04X} {comment}".strip())
    return out


def send_batches(url: str, paths: list[Path], clients: int, batch: int, headers: dict, timeout: float) -> SendResult:
    work: queue.Queue = queue.Queue()
    for i in range(0, len(paths), batch):
        work.put(paths[i : i + batch])
    result = SendResult()
    lock = threading.Lock()

    def client():
        with requests.Session() as session:
            while True:
                try:
                    chunk = work.get_nowait()
                except queue.Empty:
                    return
                body = files_body(chunk)
                t0 = time.perf_counter()
                try:
                    r = session.post(url, data=body, timeout=timeout,
                                     headers={**headers, "Content-Type": body.content_type,
                                              "Accept": "application/dicom+json"})
                    status, acked = r.status_code, count_acked(r)
                    text = "; ".join(sorted(set(failure_reasons(r)))) or r.text[:300]
                except requests.RequestException as exc:
                    status, acked, text = 0, 0, f"{type(exc).__name__}: {exc}"[:300]
                dt = time.perf_counter() - t0
                with lock:
                    result.requests += 1
                    result.latencies.append(dt)
                    result.instances_acked += acked
                    if status == 200 and acked == len(chunk):
                        result.ok_requests += 1
                    else:
                        result.failures.append((status, acked, len(chunk), text))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout * (len(paths) // batch + 1))
    result.wall = time.perf_counter() - t0
    return result


def send_big(url: str, body: MultipartBody, headers: dict, timeout: float, sampler: RssSampler) -> dict:
    """One huge request; also records the server's RSS against the bytes sent so far."""
    progress: list[tuple[int, int]] = []
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            rss = max((proc_status(p).get("VmRSS", 0) for p in sampler.pids()), default=0)
            progress.append((body.sent, rss))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        r = requests.post(url, data=body, timeout=timeout,
                          headers={**headers, "Content-Type": body.content_type, "Accept": "application/dicom+json"})
        status, acked = r.status_code, count_acked(r)
        text = "; ".join(sorted(set(failure_reasons(r)))) or r.text[:300]
    except requests.RequestException as exc:
        status, acked, text = 0, 0, f"{type(exc).__name__}: {exc}"[:300]
    wall = time.perf_counter() - t0
    done.set()
    watcher.join(timeout=2)
    return {"status": status, "acked": acked, "wall": wall, "text": text, "progress": progress}


# --- servers ---------------------------------------------------------------------------------


class Platform:
    def __init__(self, work: Path, database_url: str | None, workers: int, threads: int,
                 sqlite_immediate: bool = False):
        self.work = work
        self.var = work / "platform-var"
        self.var.mkdir()
        self.database_url = database_url
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.pg_db: str | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DEBUG", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")},
            "EXCHANGE_VAR_DIR": str(self.var),
            "EXCHANGE_STORAGE_DIR": str(self.var / "storage"),
            "SECRET_KEY": "bench-" + secrets.token_hex(24),
            "EXCHANGE_IDENTITY_HMAC_KEY": "bench-" + secrets.token_hex(24),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        if sqlite_immediate:
            # What-if experiment, not the shipped configuration: SQLite write transactions
            # started with BEGIN IMMEDIATE (Django >= 5.1 "transaction_mode"), through a wrapper
            # settings module in the temp dir. The platform's files are not touched.
            shim = work / "bench_settings"
            shim.mkdir()
            (shim / "bench_settings_immediate.py").write_text(
                "from exchange.settings import *  # noqa\n"
                "if DATABASES['default']['ENGINE'] == 'django.db.backends.sqlite3':\n"
                "    DATABASES['default']['OPTIONS']['transaction_mode'] = 'IMMEDIATE'\n")
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
            self.env["DJANGO_SETTINGS_MODULE"] = "bench_settings_immediate"
        self.token = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args, stdin: str | None = None, timeout: float = 300) -> str:
        r = subprocess.run([str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=self.env,
                           input=stdin, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed: {r.stderr[-2000:]}")
        return r.stdout

    def _psql(self, sql: str) -> None:
        u = urllib.parse.urlparse(self.database_url)
        cmd = ["psql", "-v", "ON_ERROR_STOP=1", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
               "-U", u.username or "postgres", "-d", "postgres", "-c", sql]
        env = dict(os.environ)
        if u.password:
            env["PGPASSWORD"] = urllib.parse.unquote(u.password)
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, env=env)

    def db_description(self) -> str:
        if not self.database_url:
            return "SQLite (WAL, file in temp dir)"
        u = urllib.parse.urlparse(self.database_url)
        try:
            out = subprocess.run(["psql", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432),
                                  "-U", u.username or "postgres", "-d", "postgres", "-Atc", "show server_version"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = "?"
        return f"PostgreSQL {out} ({u.hostname}:{u.port or 5432}/{u.path.lstrip('/')})"

    def setup(self) -> None:
        if self.database_url and self.database_url.startswith(("postgres://", "postgresql://")):
            self.pg_db = urllib.parse.urlparse(self.database_url).path.lstrip("/")
            if not self.pg_db.replace("_", "").isalnum():
                raise SystemExit("bench database name must be alphanumeric/underscore")
            self._psql(f'DROP DATABASE IF EXISTS "{self.pg_db}"')
            self._psql(f'CREATE DATABASE "{self.pg_db}"')
        log("platform: migrate")
        self.manage("migrate", "--noinput")
        self.manage("add_hospital", HOSPITAL, "--name", "Bench Hospital")
        self.manage("create_user", INGEST_USER, "--role", "ingest", "--hospital", HOSPITAL, "--password-stdin",
                    stdin=secrets.token_urlsafe(18) + "\n")
        out = self.manage("drf_create_token", INGEST_USER)
        tokens = [w for w in out.split() if len(w) == 40 and all(c in "0123456789abcdef" for c in w)]
        if not tokens:
            raise RuntimeError("drf_create_token printed no token")
        self.token = tokens[0]

    def start(self) -> None:
        self.logfile = open(self.work / "gunicorn.log", "wb")
        cmd = [str(VENV_BIN / "gunicorn"), "exchange.wsgi:application", "-b", f"127.0.0.1:{self.port}",
               "--workers", str(self.workers), "--threads", str(self.threads), "--timeout", "600",
               "--graceful-timeout", "10", "--log-level", "warning"]
        log("platform: " + " ".join(cmd[1:]))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(self.url + "/dicomweb/studies", self.proc, 60, ok=(200, 401, 403),
                  headers={"Authorization": f"Token {self.token}"})
        # Wait for every worker to be up so the sampler sees them all.
        deadline = time.monotonic() + 30
        while len(children_of(self.proc.pid)) < self.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def stored_count(self) -> int:
        out = self.manage("shell", "-c", "from exchange.studies.models import Instance; print(Instance.objects.count())")
        return int(out.strip().splitlines()[-1])

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.work / "gunicorn.log").read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, "gunicorn")
        self.proc = None
        if getattr(self, "logfile", None):
            self.logfile.close()
        if self.pg_db:
            try:
                self._psql(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
                self.pg_db = None
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log(f"could not drop database {self.pg_db}: {exc}")


class Orthanc:
    def __init__(self, work: Path, plugin: str):
        self.dir = work / "orthanc"
        self.dir.mkdir()
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.plugin = plugin
        self.proc: subprocess.Popen | None = None
        self.config = {
            "Name": "BENCH",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "BENCH",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def version(self) -> str:
        try:
            return requests.get(self.url + "/system", timeout=5).json().get("Version", "?")
        except (requests.RequestException, ValueError):
            return "?"

    def start(self) -> None:
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        self.logfile = open(self.dir / "orthanc.log", "wb")
        log(f"orthanc: http 127.0.0.1:{self.http_port}, dicom {self.dicom_port}")
        self.proc = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(path)], cwd=self.dir,
                                     stdout=self.logfile, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/system", self.proc, 60)
        # DICOMweb plugin loaded?
        r = requests.get(self.url + "/plugins", timeout=5)
        if "dicom-web" not in r.text:
            raise RuntimeError(f"Orthanc DICOMweb plugin not loaded: {r.text[:200]}")

    def stored_count(self) -> int:
        return int(requests.get(self.url + "/statistics", timeout=30).json()["CountInstances"])

    def stop(self) -> None:
        stop_process(self.proc, "Orthanc")
        self.proc = None
        if getattr(self, "logfile", None):
            self.logfile.close()


def find_plugin() -> str | None:
    for path in PLUGIN_CANDIDATES:
        if os.path.exists(path):
            return path
    for base in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc"):
        if os.path.isdir(base):
            for name in sorted(os.listdir(base)):
                if "DicomWeb" in name and ".so" in name:
                    return os.path.join(base, name)
    return None


# --- the run ---------------------------------------------------------------------------------


def machine(database: str) -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as fp:
        for line in fp:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fp:
        mem_kb = int(fp.readline().split()[1])
    return {
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024**2:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "database": database,
    }


class Profiler:
    """py-spy record (raw collapsed stacks) on each server process during one phase."""

    def __init__(self, pids: list[int], outdir: Path | None, label: str):
        self.procs: list[subprocess.Popen] = []
        exe = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
        if outdir is None or exe is None:
            if outdir is not None:
                log("py-spy not found: no profile (pip install py-spy into the venv)")
            return
        outdir.mkdir(parents=True, exist_ok=True)
        for pid in pids:
            out = outdir / f"{label}-{pid}.txt"
            self.procs.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--threads",
                 "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(1.0)  # let py-spy attach

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def measure_system(name: str, url: str, stow_path: str, headers: dict, sampler: RssSampler, files: list[Path],
                   total_bytes: int, args, template: BigTemplate | None, count_fn) -> dict:
    out: dict = {"name": name}
    sampler.new_phase()
    profiler = Profiler(sampler.pids(), Path(args.profile) if args.profile and name == "platform" else None, "stow")
    cpu0 = sampler.cpu_seconds()
    log(f"{name}: sending {len(files)} instances, {args.clients} clients x {args.batch} per request")
    try:
        res = send_batches(url + stow_path, files, args.clients, args.batch, headers, timeout=600)
    finally:
        profiler.stop()
    snap = sampler.snapshot()
    stored = count_fn()
    out.update(
        wall=res.wall, requests=res.requests, ok_requests=res.ok_requests, acked=res.instances_acked,
        failures=res.failures[:5], n_failures=len(res.failures), stored=stored,
        ips=len(files) / res.wall, mbps=total_bytes / MB / res.wall,
        lat_p50=statistics.median(res.latencies) if res.latencies else 0,
        lat_p95=sorted(res.latencies)[int(0.95 * (len(res.latencies) - 1))] if res.latencies else 0,
        cpu=sampler.cpu_seconds() - cpu0,
        rss=snap,
    )
    log(f"{name}: {out['ips']:.1f} inst/s, {out['mbps']:.1f} MB/s, {res.ok_requests}/{res.requests} requests OK, "
        f"stored {stored}, max worker RSS {snap['max_worker_rss'] / 2**20:.0f} MiB")
    for f in res.failures[:5]:
        log(f"{name}: failure {f}")
    if template is not None and args.big_gb > 0:
        count = max(1, int(args.big_gb * 1e9 / template.instance_size))
        body = big_body(template, count)
        sampler.new_phase()
        time.sleep(0.2)
        base_rss = max((proc_status(p).get("VmRSS", 0) for p in sampler.pids()), default=0)
        cpu0 = sampler.cpu_seconds()
        log(f"{name}: big body, {count} instances, {len(body) / 1e9:.2f} GB in one request")
        profiler = Profiler(sampler.pids(), Path(args.profile) if args.profile and name == "platform" else None, "big")
        try:
            big = send_big(url + stow_path, body, headers, timeout=3600, sampler=sampler)
        finally:
            profiler.stop()
        snap = sampler.snapshot()
        big.update(count=count, bytes=len(body), cpu=sampler.cpu_seconds() - cpu0, rss=snap, base_rss=base_rss,
                   mbps=len(body) / MB / big["wall"], ips=count / big["wall"])
        log(f"{name}: big body HTTP {big['status']}, {big['acked']}/{count} acknowledged, {big['wall']:.1f}s, "
            f"{big['mbps']:.1f} MB/s, peak worker RSS {snap['max_worker_rss'] / 2**20:.0f} MiB "
            f"(HWM {snap['max_worker_hwm'] / 2**20:.0f} MiB, before {base_rss / 2**20:.0f} MiB)")
        if big["status"] not in (200,):
            log(f"{name}: big body answer: {big['text']}")
        out["big"] = big
    return out


def growth(progress: list[tuple[int, int]]) -> str:
    """Highest RSS (MiB) seen while the first 10%, 50% and 100% of the body were being sent:
    flat numbers mean memory does not grow with the body."""
    if not progress:
        return "-"
    total = progress[-1][0] or 1
    marks = []
    for frac in (0.1, 0.5, 1.0):
        pts = [rss for sent, rss in progress if sent <= frac * total]
        marks.append(f"{max(pts) / 2**20:.0f}" if pts else "?")
    return "/".join(marks)


def mib(v: int) -> str:
    return f"{v / 2**20:.0f}"


def print_report(info: dict, args, n_files: int, total_bytes: int, results: list[dict]) -> None:
    print()
    print("=" * 100)
    print(f"Ingest (STOW-RS) benchmark - {info['date']}")
    print(f"machine : {info['nproc']} CPU ({info['cpu']}), {info['ram']} RAM, Linux {info['kernel']}")
    print(f"python  : {info['python']}; platform database: {info['database']}")
    if "orthanc" in info:
        print(f"orthanc : {info['orthanc']}")
    print(f"workload: {n_files} CT instances {args.size}x{args.size} 16-bit, {total_bytes / MB:.1f} MB, "
          f"{args.clients} clients, {args.batch} instances per request; "
          f"platform gunicorn --workers {args.workers} --threads {args.threads}")
    print("-" * 100)
    head = f"{'':<34}" + "".join(f"{r['name']:>20}" for r in results)
    print(head)

    def row(label, fn):
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        print(f"{label:<34}" + "".join(f"{c:>20}" for c in cells))

    row("wall time (s)", lambda r: f"{r['wall']:.1f}")
    row("instances/s", lambda r: f"{r['ips']:.1f}")
    row("MB/s", lambda r: f"{r['mbps']:.1f}")
    row("request latency p50/p95 (s)", lambda r: f"{r['lat_p50']:.2f}/{r['lat_p95']:.2f}")
    row("requests OK (HTTP 200, all acked)", lambda r: f"{r['ok_requests']}/{r['requests']}")
    row("instances stored", lambda r: f"{r['stored']}/{n_files}")
    row("server CPU s per instance", lambda r: f"{r['cpu'] / n_files * 1000:.1f} ms")
    row("peak RSS, max worker (MiB)", lambda r: mib(r["rss"]["max_worker_rss"]))
    row("peak RSS, all workers (MiB)", lambda r: mib(r["rss"]["sum_worker_rss"]) if r["name"] != "Orthanc" else "-")
    row("gunicorn master RSS (MiB)", lambda r: mib(r["rss"]["master_rss"]) if r["name"] != "Orthanc" else "-")
    if any("big" in r for r in results):
        row("big body: size (GB) / instances", lambda r: f"{r['big']['bytes'] / 1e9:.2f}/{r['big']['count']}")
        row("big body: HTTP status, acked", lambda r: f"{r['big']['status']}, {r['big']['acked']}")
        row("big body: wall (s)", lambda r: f"{r['big']['wall']:.1f}")
        row("big body: MB/s", lambda r: f"{r['big']['mbps']:.1f}")
        row("big body: instances/s", lambda r: f"{r['big']['ips']:.1f}")
        row("big body: RSS before (MiB)", lambda r: mib(r["big"]["base_rss"]))
        row("big body: peak RSS (MiB)", lambda r: mib(max(r["big"]["rss"]["max_worker_rss"], r["big"]["rss"]["max_worker_hwm"])))
        row("big body: RSS to 10/50/100% sent", lambda r: growth(r["big"]["progress"]))
    if len(results) == 2:
        p, o = results
        print("-" * 100)
        print(f"ratio platform/Orthanc: instances/s {p['ips'] / o['ips']:.2f}, MB/s {p['mbps'] / o['mbps']:.2f}")
        if "big" in p and "big" in o and o["big"]["wall"]:
            print(f"big body ratio platform/Orthanc: MB/s {p['big']['mbps'] / o['big']['mbps']:.2f}")
    print("=" * 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=400, help="synthetic CT instances to send (default 400)")
    ap.add_argument("--clients", type=int, default=4, help="parallel STOW-RS clients (default 4)")
    ap.add_argument("--batch", type=int, default=10, help="instances per STOW-RS request (default 10)")
    ap.add_argument("--size", type=int, default=512, help="CT rows/columns (default 512: ~0.5 MB per instance)")
    ap.add_argument("--big-gb", type=float, default=1.0, help="size of the one big STOW request in GB (0: skip)")
    ap.add_argument("--database-url", help="platform database (default: SQLite in the temp dir); "
                    "a postgres:// database is created and dropped")
    ap.add_argument("--no-orthanc", action="store_true", help="do not run the Orthanc comparison")
    ap.add_argument("--no-orthanc-big", action="store_true", help="skip the big body on Orthanc")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    ap.add_argument("--sqlite-immediate", action="store_true",
                    help="experiment: run the platform with SQLite transaction_mode=IMMEDIATE (wrapper settings)")
    ap.add_argument("--profile", help="record py-spy profiles (raw collapsed stacks) of the platform workers here")
    ap.add_argument("--tmp", help="parent of the temporary directory (default: system temp)")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    args = ap.parse_args()
    if not (1 <= args.instances <= 100_000 and 1 <= args.clients <= 64 and 1 <= args.batch <= 1000):
        ap.error("out-of-range --instances/--clients/--batch")

    # SIGTERM/SIGHUP must run the finally blocks too.
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.tmp))
    platform_srv: Platform | None = None
    orthanc: Orthanc | None = None
    samplers: list[RssSampler] = []
    results: list[dict] = []
    try:
        files_dir = work / "files"
        files_dir.mkdir()
        t0 = time.perf_counter()
        files = generate_files(args.instances, args.size, files_dir)
        total_bytes = sum(p.stat().st_size for p in files)
        log(f"generated {len(files)} instances, {total_bytes / MB:.1f} MB in {time.perf_counter() - t0:.1f}s")
        if len(files) != args.instances:
            raise RuntimeError(f"only {len(files)} instances generated")
        template = BigTemplate(args.size) if args.big_gb > 0 else None

        platform_srv = Platform(work, args.database_url, args.workers, args.threads, args.sqlite_immediate)
        info = machine(platform_srv.db_description() + (", transaction_mode=IMMEDIATE (experiment)"
                                                        if args.sqlite_immediate and not args.database_url else ""))
        platform_srv.setup()
        platform_srv.start()
        sampler = RssSampler(platform_srv.proc.pid, workers=True)
        sampler.start()
        samplers.append(sampler)
        results.append(measure_system(
            "platform", platform_srv.url, "/dicomweb/studies", {"Authorization": f"Token {platform_srv.token}"},
            sampler, files, total_bytes, args, template, platform_srv.stored_count))
        sampler.stop()
        if results[-1]["n_failures"] or results[-1].get("big", {}).get("status", 200) != 200:
            tail = platform_srv.log_tail()
            log("platform: server log tail:\n" + tail)
            results[-1]["server_log_tail"] = tail
        platform_srv.stop()

        plugin = find_plugin()
        if args.no_orthanc:
            log("Orthanc comparison skipped (--no-orthanc)")
        elif not shutil.which("Orthanc") or not plugin:
            log("Orthanc or its DICOMweb plugin is not installed: comparison skipped")
        else:
            orthanc = Orthanc(work, plugin)
            orthanc.start()
            info["orthanc"] = f"Orthanc {orthanc.version()}, plugin {plugin}"
            osampler = RssSampler(orthanc.proc.pid, workers=False)
            osampler.start()
            samplers.append(osampler)
            results.append(measure_system(
                "Orthanc", orthanc.url, "/dicom-web/studies", {}, osampler, files, total_bytes, args,
                None if args.no_orthanc_big else template, orthanc.stored_count))
        print_report(info, args, len(files), total_bytes, results)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results},
                                                  indent=2, default=str))
        bad = [r for r in results if r["stored"] != len(files) or r["ok_requests"] != r["requests"]]
        return 1 if bad else 0
    finally:
        for s in samplers:
            s.stop()
        if orthanc is not None:
            orthanc.stop()
        if platform_srv is not None:
            platform_srv.stop()
        shutil.rmtree(work, ignore_errors=True)
        log(f"removed {work}")


if __name__ == "__main__":
    sys.exit(main())
