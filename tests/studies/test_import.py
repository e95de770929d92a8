"""Import of a patient's CD / USB stick: folder, ZIP, DICOMDIR; safety limits; character sets."""

import io
import os
import shutil
import struct
import zipfile
from io import StringIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from django.core.management import CommandError, call_command
from pydicom.dataelem import DataElement
from pydicom.fileset import FileSet

from audit.models import AuditEvent, Event, Outcome
from exchange.studies import storage
from exchange.studies.importer import ImportFailed, import_path
from exchange.studies.models import BatchStatus, IngestBatch, IngestSource, Instance, Series, Study
from tests.dicom import stored_files, tmp_leftovers, ct_dataset, to_bytes

pytestmark = pytest.mark.django_db






def reasons(batch) -> dict[str, str]:
    return {e["item"]: e["reason"] for e in batch.errors}


def series_of(n, **kwargs):
    first = ct_dataset(instance_number=1, **kwargs)
    rest = [
        ct_dataset(instance_number=i, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID, **kwargs)
        for i in range(2, n + 1)
    ]
    return [first, *rest]


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, _, names in os.walk(folder):
            for n in names:
                full = Path(dirpath) / n
                zf.write(full, full.relative_to(folder).as_posix())
    return target


def patch_central(data: bytes, name: str, *, flags: int | None = None, file_size: int | None = None) -> bytes:
    """Rewrite fields of one entry's central directory header (APPNOTE 4.3.12): what zipfile
    trusts when it opens an entry, so a test can make a header lie."""
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", out, pos + 28)[0]
        if out[pos + 46:pos + 46 + name_len] == name.encode():
            if flags is not None:
                struct.pack_into("<H", out, pos + 8, flags)
            if file_size is not None:
                struct.pack_into("<I", out, pos + 24, file_size)
            return bytes(out)
        pos = out.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"{name} not in central directory")


@pytest.fixture
def spool_bytes(monkeypatch):
    """Counts every byte written to the spool, to prove a refused entry was not read."""
    written = {"bytes": 0}
    original = storage.SpoolWriter.write

    def write(self, chunk):
        written["bytes"] += len(chunk)
        return original(self, chunk)

    monkeypatch.setattr(storage.SpoolWriter, "write", write)
    return written


@pytest.fixture
def medium(tmp_path):
    """A folder as a patient's CD holds it: nested DICOM, a README, a viewer and its autorun."""
    root = tmp_path / "PATIENT_CD"
    (root / "IMAGES" / "SER1").mkdir(parents=True)
    (root / "VIEWER").mkdir()
    ds1, ds2, ds3 = series_of(3)
    (root / "IMAGES" / "SER1" / "IM1.dcm").write_bytes(to_bytes(ds1))
    (root / "IMAGES" / "SER1" / "IM2").write_bytes(to_bytes(ds2))  # no extension: found by 'DICM'
    (root / "IMAGES" / "IM3.DCM").write_bytes(to_bytes(ds3))
    (root / "README.TXT").write_text("Open VIEWER/viewer.exe to see the images.\n")
    marker = tmp_path / "executed"
    viewer = root / "VIEWER" / "viewer.exe"
    viewer.write_text(f"#!/bin/sh\ntouch {marker}\n")
    viewer.chmod(0o755)
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")
    return root, [ds1, ds2, ds3], marker


# --- folders -------------------------------------------------------------------------------


def test_folder_import_indexes_nested_dicom_and_skips_the_rest(hospital_a, ingest_a, medium, settings):
    root, datasets, marker = medium
    progress = []

    summary = import_path(root, hospital=hospital_a, actor=ingest_a, progress=lambda d, t: progress.append((d, t)))

    batch = summary.batch
    assert (batch.stored, batch.duplicates, batch.rejected, batch.received) == (3, 0, 0, 3)
    assert batch.source == IngestSource.IMPORT and batch.status == BatchStatus.DONE and batch.finished_at
    assert batch.label == "PATIENT_CD"
    assert summary.skipped == 3
    assert sorted(summary.skipped_items) == ["AUTORUN.INF", "README.TXT", "VIEWER/viewer.exe"]
    assert not marker.exists()  # the viewer was read as data, never run
    study = Study.objects.get()
    assert study.num_instances == 3 and study.hospital == hospital_a
    assert study.patient_name_ideographic == "王^小东"
    assert {i.sop_instance_uid for i in Instance.objects.all()} == {d.SOPInstanceUID for d in datasets}
    assert len(stored_files(settings)) == 3 and tmp_leftovers(settings) == []
    assert progress[-1] == (6, 6) and [d for d, _ in progress] == list(range(1, 7))
    event = AuditEvent.objects.get(event=Event.IMPORT)
    assert event.outcome == Outcome.SUCCESS and event.actor == ingest_a
    assert event.details == {"batch": batch.pk, "stored": 3, "duplicates": 0, "rejected": 0, "skipped": 3}


def test_reimport_is_idempotent(hospital_a, medium, settings):
    root, _, _ = medium
    import_path(root, hospital=hospital_a)
    files = sorted(stored_files(settings))

    again = import_path(root, hospital=hospital_a).batch

    assert (again.stored, again.duplicates, again.rejected) == (0, 3, 0)
    assert Instance.objects.count() == 3 and Study.objects.get().num_instances == 3
    assert sorted(stored_files(settings)) == files and tmp_leftovers(settings) == []
    assert IngestBatch.objects.count() == 2


def test_bad_dicom_in_a_folder_gets_a_reason_per_file(hospital_a, tmp_path, settings):
    root = tmp_path / "usb"
    root.mkdir()
    good = ct_dataset()
    (root / "good.dcm").write_bytes(to_bytes(good))
    (root / "garbage.dcm").write_bytes(b"this is not DICOM at all" * 20)
    (root / "truncated").write_bytes(to_bytes(ct_dataset())[:-100])
    no_pid = ct_dataset(patient_id="")
    (root / "nopid.dcm").write_bytes(to_bytes(no_pid))

    summary = import_path(root, hospital=hospital_a)

    batch = summary.batch
    assert (batch.stored, batch.rejected, summary.skipped) == (1, 3, 0)
    why = reasons(batch)
    assert why["garbage.dcm"] == "not a DICOM Part 10 file (no DICM prefix)"
    assert "truncated" in why["truncated"]
    assert why["nopid.dcm"] == "PatientID is missing"
    assert {e["code"] for e in batch.errors} <= {"0xC000", "0xA900"}
    assert len(stored_files(settings)) == 1 and tmp_leftovers(settings) == []
    assert AuditEvent.objects.get(event=Event.IMPORT).outcome == Outcome.MINOR_FAILURE


def test_symlinks_are_not_followed_out_of_the_folder(hospital_a, tmp_path, settings):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(to_bytes(ct_dataset()))
    root = tmp_path / "cd"
    root.mkdir()
    (root / "IM1.dcm").write_bytes(to_bytes(ct_dataset()))
    (root / "link.dcm").symlink_to(outside / "secret.dcm")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "again.dcm").symlink_to(root / "IM1.dcm")  # inside: read once

    batch = import_path(root, hospital=hospital_a).batch

    assert (batch.stored, batch.duplicates, batch.rejected) == (1, 0, 2)
    why = reasons(batch)
    assert "outside the imported folder" in why["link.dcm"]
    assert "not followed" in why["linkdir"]
    assert Instance.objects.count() == 1 and len(stored_files(settings)) == 1


def test_a_file_over_the_instance_limit_is_not_read_to_the_end(hospital_a, tmp_path, settings, spool_bytes):
    root = tmp_path / "cd"
    root.mkdir()
    (root / "big.dcm").write_bytes(to_bytes(ct_dataset(size=512)))  # ~512 KB
    settings.EXCHANGE_MAX_INSTANCE_BYTES = 100_000

    batch = import_path(root, hospital=hospital_a).batch

    assert batch.rejected == 1 and "per-instance limit of 100000 bytes" in reasons(batch)["big.dcm"]
    assert batch.errors[0]["code"] == "0xA700"
    assert spool_bytes["bytes"] <= 100_000
    assert stored_files(settings) == [] and tmp_leftovers(settings) == []


# --- ZIP -----------------------------------------------------------------------------------


def test_zip_import(hospital_a, medium, tmp_path, settings):
    root, datasets, marker = medium
    archive = zip_folder(root, tmp_path / "cd.zip")

    summary = import_path(archive, hospital=hospital_a)

    batch = summary.batch
    assert (batch.stored, batch.rejected, summary.skipped) == (3, 0, 3)
    assert batch.label == "cd.zip" and batch.status == BatchStatus.DONE
    assert "VIEWER/viewer.exe" in summary.skipped_items and not marker.exists()
    assert Study.objects.get().num_instances == 3
    assert len(stored_files(settings)) == 3 and tmp_leftovers(settings) == []
    # nothing was unpacked next to the archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PATIENT_CD", "cd.zip", "storage"]


def test_zip_entries_that_climb_out_are_refused_and_create_nothing(hospital_a, tmp_path, settings):
    data = to_bytes(ct_dataset())
    archive = tmp_path / "in" / "evil.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("../evil.dcm", "/abs.dcm", "a/../../x.dcm", "C:/win.dcm", "..\\back.dcm"):
            zf.writestr(name, data)
        zf.writestr("good/IM1.dcm", to_bytes(ct_dataset()))
    outside_storage = lambda: {p for p in tmp_path.rglob("*") if "storage" not in p.relative_to(tmp_path).parts}
    before = outside_storage()

    batch = import_path(archive, hospital=hospital_a).batch

    assert (batch.stored, batch.rejected) == (1, 5)
    assert all("absolute or contains '..'" in e["reason"] for e in batch.errors)
    assert {e["item"] for e in batch.errors} == {"../evil.dcm", "/abs.dcm", "a/../../x.dcm", "C:/win.dcm", "../back.dcm"}
    assert outside_storage() == before
    assert not (tmp_path / "evil.dcm").exists() and not Path("/abs.dcm").exists()
    assert len(stored_files(settings)) == 1 and tmp_leftovers(settings) == []


def test_zip_bomb_entry_is_refused_by_ratio_without_reading_it(hospital_a, tmp_path, settings, spool_bytes):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.dcm", b"\0" * (50 * 1024 * 1024))
        real = to_bytes(ct_dataset())  # generated UIDs vary in length: measure this one
        zf.writestr("IM1.dcm", real)
    assert archive.stat().st_size < 1024 * 1024

    batch = import_path(archive, hospital=hospital_a).batch

    assert (batch.stored, batch.rejected) == (1, 1)
    assert "compression ratio above 200:1" in reasons(batch)["bomb.dcm"]
    assert spool_bytes["bytes"] == len(real)  # only the real instance was spooled
    assert tmp_leftovers(settings) == []


def test_zip_over_the_total_limit_fails_as_a_whole(hospital_a, tmp_path, settings, spool_bytes):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("IM1.dcm", to_bytes(ct_dataset()))
        zf.writestr("zeros.bin", b"\0" * (5 * 1024 * 1024))
    settings.EXCHANGE_ZIP_MAX_TOTAL_BYTES = 1024 * 1024

    with pytest.raises(ImportFailed, match="more than the limit of 1048576") as info:
        import_path(archive, hospital=hospital_a)

    assert info.value.batch.status == BatchStatus.FAILED and info.value.batch.finished_at
    assert spool_bytes["bytes"] == 0 and Instance.objects.count() == 0
    assert AuditEvent.objects.get(event=Event.IMPORT).outcome == Outcome.SERIOUS_FAILURE


def test_zip_with_too_many_entries_fails(hospital_a, tmp_path, settings):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}.txt", "x")
    settings.EXCHANGE_ZIP_MAX_ENTRIES = 4

    with pytest.raises(ImportFailed, match="5 entries"):
        import_path(archive, hospital=hospital_a)


def test_a_lying_zip_header_does_not_make_the_importer_read_more(hospital_a, tmp_path, settings, spool_bytes):
    # given an entry that declares 1,000 bytes but inflates to 5 MB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.dcm", b"\0" * (5 * 1024 * 1024))
        zf.writestr("IM1.dcm", to_bytes(ct_dataset()))
    archive = tmp_path / "liar.zip"
    archive.write_bytes(patch_central(buf.getvalue(), "liar.dcm", file_size=1000))
    settings.EXCHANGE_MAX_INSTANCE_BYTES = 100_000

    # when
    batch = import_path(archive, hospital=hospital_a).batch

    # then reading stopped long before the real size, and the entry is reported as corrupt
    assert (batch.stored, batch.rejected) == (1, 1)
    assert "corrupt ZIP entry" in reasons(batch)["liar.dcm"]
    assert spool_bytes["bytes"] <= 1000 + len(to_bytes(ct_dataset()))
    assert len(stored_files(settings)) == 1 and tmp_leftovers(settings) == []


def test_zip_entry_over_the_instance_limit_is_refused_from_its_header(hospital_a, tmp_path, settings, spool_bytes):
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.dcm", to_bytes(ct_dataset(size=512)))
    settings.EXCHANGE_MAX_INSTANCE_BYTES = 100_000

    batch = import_path(archive, hospital=hospital_a).batch

    assert batch.rejected == 1 and "per-instance limit" in reasons(batch)["big.dcm"]
    assert spool_bytes["bytes"] == 0


def test_encrypted_and_nested_zip_entries_are_refused(hospital_a, tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("IM1.dcm", to_bytes(ct_dataset()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("locked.dcm", to_bytes(ct_dataset()))
        zf.writestr("inner.zip", inner.getvalue())
        zf.writestr("disguised.bin", inner.getvalue())
    archive = tmp_path / "cd.zip"
    archive.write_bytes(patch_central(buf.getvalue(), "locked.dcm", flags=0x1))

    summary = import_path(archive, hospital=hospital_a)

    why = reasons(summary.batch)
    assert "encrypted" in why["locked.dcm"]
    assert "ZIP archive inside the import is not opened" in why["inner.zip"]
    assert "ZIP archive inside the import is not opened" in why["disguised.bin"]
    assert summary.batch.stored == 0 and summary.skipped == 0 and Instance.objects.count() == 0


@pytest.mark.parametrize("content", [b"PK\x03\x04" + b"garbage" * 100, b"garbage", "truncated"])
def test_corrupt_zip_fails_and_leaves_nothing(hospital_a, tmp_path, settings, content):
    if content == "truncated":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("IM1.dcm", to_bytes(ct_dataset()))
        content = buf.getvalue()[:-30]  # end of central directory cut off
    archive = tmp_path / "cd.zip"
    archive.write_bytes(content)

    with pytest.raises(ImportFailed, match="not a readable ZIP archive"):
        import_path(archive, hospital=hospital_a)

    batch = IngestBatch.objects.get()
    assert batch.status == BatchStatus.FAILED and batch.finished_at and batch.received == 0
    assert Study.objects.count() == Series.objects.count() == Instance.objects.count() == 0
    assert stored_files(settings) == [] and tmp_leftovers(settings) == []


# --- DICOMDIR ------------------------------------------------------------------------------


def dicomdir_tree(folder: Path, n=3) -> list:
    datasets = series_of(n)
    other = ct_dataset(patient_id="P002", name="Li^Na", instance_number=9)
    fs = FileSet()
    for ds in [*datasets, other]:
        ds.StudyID = "1"  # the STUDY record requires it (PS3.3 F.5.2)
        fs.add(ds)
    fs.write(folder)
    return [*datasets, other]


def test_dicomdir_tree_indexes_all_referenced_instances(hospital_a, tmp_path, settings):
    root = tmp_path / "CDROM"
    datasets = dicomdir_tree(root)
    assert (root / "DICOMDIR").exists()
    # a file the DICOMDIR does not list is still imported, once
    (root / "EXTRA").mkdir()
    extra = ct_dataset(patient_id="P003")
    (root / "EXTRA" / "IMG0001").write_bytes(to_bytes(extra))

    summary = import_path(root, hospital=hospital_a)

    batch = summary.batch
    assert (batch.received, batch.stored, batch.rejected, summary.skipped) == (5, 5, 0, 0)
    assert {i.sop_instance_uid for i in Instance.objects.all()} == {d.SOPInstanceUID for d in [*datasets, extra]}
    assert Study.objects.count() == 3
    # the DICOMDIR itself is the index, not an instance
    dicomdir = pydicom.dcmread(root / "DICOMDIR")
    assert not Instance.objects.filter(sop_instance_uid=dicomdir.file_meta.MediaStorageSOPInstanceUID).exists()
    assert len(stored_files(settings)) == 5


def test_dicomdir_ids_match_case_insensitively_and_missing_files_are_reported(hospital_a, tmp_path):
    root = tmp_path / "cd"
    datasets = dicomdir_tree(root)
    # the medium shows lower-case names (a common ISO 9660 mount option) and one file is gone
    for dirpath, dirnames, names in os.walk(root, topdown=False):
        for n in names + dirnames:
            os.rename(Path(dirpath) / n, Path(dirpath) / n.lower())
    files = sorted(p for p in root.rglob("im*") if p.is_file())
    files[0].unlink()

    summary = import_path(root, hospital=hospital_a)

    batch = summary.batch
    assert (batch.stored, batch.rejected, summary.skipped) == (len(datasets) - 1, 1, 0)
    assert batch.errors[0]["reason"] == "listed in the DICOMDIR but not found on the medium"
    assert batch.errors[0]["item"].startswith("PT")  # the ID as the DICOMDIR spells it


def test_a_referenced_file_is_dicom_by_declaration(hospital_a, tmp_path):
    # given a DICOMDIR entry whose file is not DICOM: it is rejected with a reason, not skipped
    root = tmp_path / "cd"
    dicomdir_tree(root)
    victim = sorted(p for p in root.rglob("IM*") if p.is_file())[0]
    victim.write_bytes(b"overwritten")

    summary = import_path(root, hospital=hospital_a)

    assert summary.skipped == 0 and summary.batch.rejected == 1
    assert summary.batch.errors[0]["reason"] == "not a DICOM Part 10 file (no DICM prefix)"


def test_dicomdir_tree_in_a_zip(hospital_a, tmp_path, settings):
    root = tmp_path / "cd"
    datasets = dicomdir_tree(root)
    archive = zip_folder(root, tmp_path / "cd.zip")

    summary = import_path(archive, hospital=hospital_a)

    assert (summary.batch.stored, summary.batch.rejected, summary.skipped, summary.notes) == (len(datasets), 0, 0, [])
    assert Instance.objects.count() == len(datasets) and tmp_leftovers(settings) == []

    again = import_path(archive, hospital=hospital_a).batch
    assert (again.stored, again.duplicates) == (0, len(datasets))


def test_an_unreadable_dicomdir_does_not_stop_the_import(hospital_a, tmp_path):
    root = tmp_path / "cd"
    datasets = dicomdir_tree(root)
    (root / "DICOMDIR").write_bytes(b"broken")

    summary = import_path(root, hospital=hospital_a)

    assert summary.batch.stored == len(datasets) and summary.batch.rejected == 0
    assert "DICOMDIR 'DICOMDIR' cannot be read" in summary.notes[0]


# --- management command --------------------------------------------------------------------


def test_command_prints_progress_and_summary(hospital_a, tmp_path, medium):
    root, _, _ = medium
    (root / "broken.dcm").write_bytes(b"not dicom")
    (root / "broken2.dcm").write_bytes(b"not dicom either")
    out, err = StringIO(), StringIO()

    call_command("import_dicom", str(root), "--hospital", "PPH", stdout=out, stderr=err)

    text = out.getvalue()
    assert "imported: 3" in text and "duplicates: 0" in text and "rejected: 2" in text
    assert "2 × not a DICOM Part 10 file (no DICM prefix)" in text
    assert "skipped non-DICOM: 3" in text
    assert "bytes stored: " in text and str(IngestBatch.objects.get().bytes_stored) in text
    assert "8/8 files" in err.getvalue()  # not a TTY: plain lines, the last one at the end


def test_command_quiet_prints_no_progress(hospital_a, medium):
    root, _, _ = medium
    out, err = StringIO(), StringIO()
    call_command("import_dicom", str(root), "--hospital", "pph", "--quiet", stdout=out, stderr=err)
    assert err.getvalue() == "" and "imported: 3" in out.getvalue()


def test_command_errors(hospital_a, tmp_path):
    with pytest.raises(CommandError, match="unknown hospital"):
        call_command("import_dicom", str(tmp_path), "--hospital", "NOPE", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="no such file or folder"):
        call_command("import_dicom", str(tmp_path / "missing"), "--hospital", "PPH", stdout=StringIO(), stderr=StringIO())
    bad = tmp_path / "cd.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CommandError, match="import failed: not a readable ZIP archive"):
        call_command("import_dicom", str(bad), "--hospital", "PPH", stdout=StringIO(), stderr=StringIO())
    assert Instance.objects.count() == 0


# --- character sets ------------------------------------------------------------------------


def test_pydicom_charset_files_are_decoded(hospital_a, tmp_path):
    root = tmp_path / "charsets"
    root.mkdir()
    for f in pydicom.data.get_charset_files():
        shutil.copy(f, root)

    summary = import_path(root, hospital=hospital_a)

    def names(patient_id):
        s = Study.objects.get(dicom_patient_id=patient_id)
        return s.patient_name_alphabetic, s.patient_name_ideographic, s.patient_name_phonetic

    # GB18030 and ISO_IR 192 (PS3.5 Annex J)
    assert names("X2EXAMPLE") == ("Wang^XiaoDong", "王^小东", "")
    assert names("X1EXAMPLE") == ("Wang^XiaoDong", "王^小東", "")
    # ISO 2022 code extensions (PS3.5 Annex H Japanese, Annex I Korean)
    assert names("H31EXAMPLE") == ("Yamada^Tarou", "山田^太郎", "やまだ^たろう")
    assert names("H32EXAMPLE") == ("ﾔﾏﾀﾞ^ﾀﾛｳ", "山田^太郎", "やまだ^たろう")
    assert names("I2EXAMPLE") == ("Hong^Gildong", "洪^吉洞", "홍^길동")
    assert names("2008-3")[0] == "김희중"  # chrKoreanMulti.dcm
    assert names("SCSRUSS")[0] == "Люкceмбypг" and names("SCSGREEK")[0] == "Διονυσιος"
    # legit rejections, with a clear reason
    why = reasons(summary.batch)
    assert why["chrSQEncoding.dcm"] == why["chrSQEncoding1.dcm"] == "SOPClassUID is missing"
    # two pairs of sample files reuse one SOPInstanceUID with different bytes: the second is refused
    refused_dup = [r for r in why.values() if "SOPInstanceUID is already stored" in r]
    assert len(refused_dup) == 2
    assert summary.batch.rejected == 4 and summary.skipped == 1  # FileInfo.txt
    assert summary.skipped_items == ["FileInfo.txt"]


def test_gbk_patient_name_is_decoded(hospital_a, tmp_path):
    root = tmp_path / "cd"
    root.mkdir()
    ds = ct_dataset(charset="GBK", name="Zhang^Wei=张^伟")
    (root / "IM1.dcm").write_bytes(to_bytes(ds))
    assert b"\xd5\xc5^\xce\xb0" in (root / "IM1.dcm").read_bytes()  # really GBK on disk

    import_path(root, hospital=hospital_a)

    study = Study.objects.get()
    assert (study.patient_name_alphabetic, study.patient_name_ideographic) == ("Zhang^Wei", "张^伟")


def iso2022_ir58_file() -> bytes:
    # pydicom 3.0.2 writes ISO 2022 IR 58 text without the ESC $ ) A designation, so the
    # bytes are built by hand, as in PS3.5 Annex K.2 (escape before each ideographic group).
    ds = ct_dataset(charset=["", "ISO 2022 IR 58"], name="X")
    ds["PatientName"] = DataElement(0x00100010, "PN", b"Zhang^Wei=\x1b$)A\xd5\xc5^\x1b$)A\xce\xb0")
    return to_bytes(ds)


def test_iso2022_ir58_file_is_stored(hospital_a, tmp_path):
    root = tmp_path / "cd"
    root.mkdir()
    (root / "IM1.dcm").write_bytes(iso2022_ir58_file())

    batch = import_path(root, hospital=hospital_a).batch

    assert batch.stored == 1
    assert Study.objects.get().patient_name_alphabetic == "Zhang^Wei"


def test_iso2022_ir58_patient_name_is_decoded(hospital_a, tmp_path):
    root = tmp_path / "cd"
    root.mkdir()
    (root / "IM1.dcm").write_bytes(iso2022_ir58_file())

    import_path(root, hospital=hospital_a)

    assert Study.objects.get().patient_name_ideographic == "张^伟"


class Terminal(StringIO):
    def isatty(self):
        return True


def test_command_redraws_a_bar_on_a_terminal(hospital_a, medium):
    root, _, _ = medium
    err = Terminal()
    call_command("import_dicom", str(root), "--hospital", "PPH", stdout=StringIO(), stderr=err)
    text = err.getvalue()
    assert text.count("\r[") == 6 and text.endswith("] 6/6 files\n")
    assert f"\r[{'#' * 30}] 6/6 files" in text
