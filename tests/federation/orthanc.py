"""A real Orthanc (with its DICOMweb plugin) on free loopback ports, in a throw-away directory.

Reuses bench/ingest.py's approach (temp JSON config, its own session so it can be stopped as a
group). The same storage directory survives stop()/kill()/start(), for outage tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import requests

from bench.ingest import find_plugin, free_port, stop_process, wait_http


def available() -> tuple[bool, str]:
    if not shutil.which("Orthanc"):
        return False, "the Orthanc binary is not on PATH (Debian package orthanc)"
    if not find_plugin():
        return False, "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return True, ""


class OrthancServer:
    def __init__(self, work: Path, *, aet: str, username: str | None = None, password: str | None = None,
                 modalities: dict | None = None):
        self.dir = Path(work)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.username, self.password = username, password
        self.proc: subprocess.Popen | None = None
        self.config = {
            "Name": aet,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            # Refuse associations addressed to another AE title (the "wrong AE title" test).
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(username),
            "RegisteredUsers": {username: password} if username else {},
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [find_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
            "DefaultEncoding": "Utf8",
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
            "DicomScpTimeout": 10,
        }
        if modalities:
            # Known DICOM nodes, {name: [AE title, host, port]}: C-MOVE destinations (PS3.4 C.4.2),
            # which may also C-MOVE from this archive.
            self.config["DicomModalities"] = {name: {"AET": aet_, "Host": host, "Port": port, "AllowMove": True}
                                              for name, (aet_, host, port) in modalities.items()}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    @property
    def auth(self):
        return (self.username, self.password) if self.username else None

    def start(self) -> OrthancServer:
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        logfile = open(self.dir / "orthanc.log", "ab")
        try:
            self.proc = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(path)], cwd=self.dir,
                                         stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            logfile.close()
        wait_http(self.url + "/system", self.proc, 60, auth=self.auth)
        return self

    def stop(self) -> None:
        stop_process(self.proc, f"Orthanc {self.aet}")
        self.proc = None

    def kill(self) -> None:
        """An outage: SIGKILL, no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def upload(self, paths) -> int:
        n = 0
        with requests.Session() as s:
            s.auth = self.auth
            for p in paths:
                r = s.post(self.url + "/instances", data=Path(p).read_bytes(), timeout=30)
                r.raise_for_status()
                n += 1
        return n
