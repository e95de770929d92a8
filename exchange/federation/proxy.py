"""Retrieve proxy: the instances of a federated study (Study.availability = remote) are fetched
from the study's source archive on demand — WADO-RS (PS3.18 §10.4.1.1.1) or C-GET (PS3.4
C.4.3) — streamed on to the client while they fill the on-disk cache (exchange/federation/
cache.py), and served from that cache afterwards.

A DIMSE endpoint whose retrieve method is C-MOVE (PS3.4 C.4.2) is asked to send the instance to
the platform's own SCP (``dicom_scp``); the ingest adopts it into its index row (storage_key
filled), and it is served from the platform's storage from then on — it is no longer remote, and
not in the bounded cache.

A fill is written to a temporary file and renamed into place only when the whole instance
arrived and parses as DICOM Part 10 with the SOP Instance UID that was asked for (header only,
exchange/studies/dicomfile.parse). A transfer cut short — the archive drops, the client goes
away, the file is not what was asked — leaves no cache entry.

This module decides nothing about who may see what: callers (exchange/dicomweb/views.py, the
prefetch task) have asked consent.policy and written their audit events.

Public functions (also for bench/federation.py):
    is_remote(instance)         held by an archive, not stored by the platform
    open_instances(instances)   -> a Fetch (transfer_syntax_uid, chunks(), close()) per instance:
                                   storage, cache, or the source while filling the cache; a
                                   series not cached comes in one request
    warm(instances)             -> Warmed(fetched, bytes, there); metadata reads, prefetch
    instance_path(instance)     -> str; a file to read (storage, or the cache after a fetch)
    move_to_platform(instance)  -> bool; C-MOVE to the platform's SCP, wait for the ingest
    is_cached(instance)         -> bool
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import transaction

from exchange.federation import cache
from exchange.federation.connectors import ConnectorError, ErrorCode, connector_for
from exchange.studies import storage
from exchange.studies.dicomfile import Rejected, parse
from exchange.studies.models import Availability, Instance

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
# File Meta Information is a few hundred bytes; a "Part 10 file" whose meta is longer is not one.
MAX_META_BYTES = 64 * 1024
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def is_remote(instance) -> bool:
    return not instance.storage_key and instance.series.study.availability == Availability.REMOTE


def _endpoint(instance):
    endpoint = instance.series.study.source_endpoint
    if endpoint is None:
        raise ConnectorError(ErrorCode.CONFIG, "The archive that holds this study is no longer configured on the platform.")
    return endpoint


def moves_to_platform(instance) -> bool:
    """Whether the instance's archive is retrieved from by C-MOVE to the platform's SCP."""
    from hospitals.models import EndpointKind, RetrieveMethod

    endpoint = instance.series.study.source_endpoint
    return (endpoint is not None and endpoint.kind == EndpointKind.DIMSE
            and endpoint.retrieve_method == RetrieveMethod.C_MOVE)


# The row's fields the ingest fills when it adopts a moved instance.
_STORED_FIELDS = ("storage_key", "size", "transfer_syntax_uid", "sop_class_uid", "pixel_data_offset",
                  "pixel_data_length", "number_of_frames", "rows", "columns")
POLL_SECONDS = 0.1


def _stored_now(instance) -> bool:
    """Re-read the row: if the ingest has stored the instance meanwhile, take its fields."""
    row = Instance.objects.filter(pk=instance.pk).values(*_STORED_FIELDS).first()
    if row is None or not row["storage_key"]:
        return False
    for name, value in row.items():
        setattr(instance, name, value)
    return True


def move_to_platform(instance) -> bool:
    """C-MOVE the instance from its archive to the platform's SCP (PS3.4 C.4.2) and wait until
    the ingest has stored it (the row has a storage_key). Returns False when it was stored
    already (nothing asked), True after a move. The SCP commits before it answers the C-STORE,
    so the row is normally filled when the archive's final response arrives; an archive that
    reports success without having sent to us is given the endpoint's timeout, then a
    ConnectorError says what to configure."""
    if _stored_now(instance):
        return False
    endpoint = _endpoint(instance)
    connector = connector_for(endpoint)
    series = instance.series
    connector.move_instance(series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid)
    deadline = time.monotonic() + float(endpoint.timeout or 30)
    while not _stored_now(instance):
        if time.monotonic() >= deadline:
            from exchange.federation.connectors.move import not_delivered

            raise not_delivered(f"The archive reported the C-MOVE as done, but the instance did not arrive at the "
                                f"platform within {float(endpoint.timeout or 30):g} s.")
        time.sleep(POLL_SECONDS)
    return True


def _from_storage(instance, chunk_size: int) -> Fetch:
    """A stored instance's bytes (the file as the ingest stored it: preamble zeroed, its meta)."""
    fp = None
    try:
        fp = storage.open_key(instance.storage_key)
        first = fp.read(max(chunk_size, 4096))
        ts = transfer_syntax_of(first[:MAX_META_BYTES]) or instance.transfer_syntax_uid
    except (OSError, ValueError):
        if fp is not None:
            fp.close()
        raise ConnectorError(ErrorCode.PROTOCOL, "The instance moved to the platform cannot be read from storage.") from None

    def rest():
        while chunk := fp.read(chunk_size):
            yield chunk

    return Fetch(ts, [first], rest(), from_cache=False, closer=fp.close)


def is_cached(instance) -> bool:
    endpoint_id = instance.series.study.source_endpoint_id
    return endpoint_id is not None and cache.contains(endpoint_id, instance.sop_instance_uid)


def transfer_syntax_of(head: bytes) -> str | None:
    """TransferSyntaxUID (0002,0010) from the first bytes of a Part 10 file; None while more bytes
    are needed. Raises ValueError for what is not a Part 10 file."""
    meta = file_meta(head)
    return meta[0] if meta else None


def file_meta(head: bytes) -> tuple[str, str] | None:
    """(TransferSyntaxUID (0002,0010), MediaStorageSOPInstanceUID (0002,0003)) from the first
    bytes of a Part 10 file (PS3.10 §7.1: 128-byte preamble, "DICM", group 0002 in Explicit VR
    Little Endian, ascending tags); None while more bytes are needed. Raises ValueError for what
    is not a Part 10 file."""
    if len(head) < 132:
        return None
    if head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos, sop_uid = 132, ""
    while True:
        if len(head) < pos + 8:
            return None
        if int.from_bytes(head[pos:pos + 2], "little") != 0x0002:
            raise ValueError("the file meta has no TransferSyntaxUID")
        element, vr = int.from_bytes(head[pos + 2:pos + 4], "little"), head[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if len(head) < pos + 12:
                return None
            length, start = int.from_bytes(head[pos + 8:pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(head[pos + 6:pos + 8], "little"), pos + 8
        if length == 0xFFFFFFFF or start + length > MAX_META_BYTES:
            raise ValueError("malformed file meta")
        if element in (0x0003, 0x0010):
            if len(head) < start + length:
                return None
            value = head[start:start + length].decode("ascii", "replace").strip("\0 ")
            if element == 0x0010:
                return value, sop_uid
            sop_uid = value
        pos = start + length


class Fetch:
    """One instance's Part 10 bytes: ``transfer_syntax_uid`` is known (the file meta was read)
    before ``chunks()`` yields the first byte. ``from_cache`` says where they come from."""

    def __init__(self, transfer_syntax_uid: str, head: list[bytes], rest: Iterator[bytes], *, from_cache: bool, closer,
                 instance=None, fetched: bool = False):
        self.transfer_syntax_uid = transfer_syntax_uid
        self.from_cache = from_cache
        self.instance = instance
        self.fetched = fetched  # brought from the archive by this fetch (not cache, not storage)
        self._head, self._rest, self._closer = head, rest, closer

    def chunks(self) -> Iterator[bytes]:
        try:
            head, self._head = self._head, []
            yield from head
            yield from self._rest
        finally:
            self.close()

    def close(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()


def _peek(chunks: Iterator[bytes]) -> tuple[str, str, list[bytes]]:
    """Read chunks until the file meta is read: (transfer syntax, SOP Instance UID, chunks read)."""
    head: list[bytes] = []
    data = b""
    for chunk in chunks:
        head.append(chunk)
        data += chunk[:MAX_META_BYTES]
        try:
            meta = file_meta(data[:MAX_META_BYTES])
        except ValueError as exc:
            raise ConnectorError(ErrorCode.PROTOCOL, f"The archive sent something that is not DICOM: {exc}.") from None
        if meta and meta[0]:
            return meta[0], meta[1], head
        if len(data) >= MAX_META_BYTES:
            break
    raise ConnectorError(ErrorCode.PROTOCOL, "The archive's file ended inside its DICOM file meta.")


def _from_cache(instance, chunk_size: int) -> Fetch | None:
    endpoint_id = instance.series.study.source_endpoint_id
    if endpoint_id is None:
        return None
    fp = cache.open_entry(endpoint_id, instance.sop_instance_uid)
    if fp is None:
        return None
    try:
        first = fp.read(max(chunk_size, 4096))
        ts = transfer_syntax_of(first[:MAX_META_BYTES])
        if not ts:
            raise ValueError("no transfer syntax")
    except (OSError, ValueError):
        fp.close()
        return None  # cannot happen for a verified entry; fetch again rather than fail

    def rest():
        while chunk := fp.read(chunk_size):
            yield chunk

    return Fetch(ts, [first], rest(), from_cache=True, closer=fp.close)


def _verify(path, instance):
    try:
        parsed = parse(str(path))
    except Rejected as exc:
        raise ConnectorError(ErrorCode.PROTOCOL, f"The archive sent a file that is not valid DICOM ({exc.message}); "
                             "nothing was kept.") from None
    if parsed.sop_instance_uid != instance.sop_instance_uid:
        raise ConnectorError(ErrorCode.PROTOCOL, "The archive sent another instance than the one asked for; nothing was kept.")
    return parsed


def note_instance(instance, parsed, size: int) -> None:
    """Fill in what the index did not know about a remote instance (decisions/0010: transfer
    syntax, size, Pixel Data position), once: a conditional update, so a second fill changes nothing."""
    fields = {
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "size": size,
        "pixel_data_offset": parsed.instance["pixel_data_offset"],
        "pixel_data_length": parsed.instance["pixel_data_length"],
        "number_of_frames": parsed.instance["number_of_frames"] or 1,
    }
    for name in ("rows", "columns"):
        if getattr(instance, name) is None and parsed.instance[name] is not None:
            fields[name] = parsed.instance[name]
    with transaction.atomic():
        Instance.objects.filter(pk=instance.pk, transfer_syntax_uid="").update(**fields)
    for name, value in fields.items():
        setattr(instance, name, value)


def _filling(body: Iterator[bytes], entry: cache.TempEntry, instance) -> Iterator[bytes]:
    """Pass the source's chunks on while writing them to the cache's temporary file; commit the
    entry only after the last chunk arrived and the file verified. Any way out before that
    (source error, consumer closing the stream, verification failure) removes the file."""
    try:
        for chunk in body:
            try:
                entry.write(chunk)
            except cache.TooLarge as exc:
                raise ConnectorError(ErrorCode.PROTOCOL, f"The archive sent an {exc}; nothing was kept.") from None
            yield chunk
        entry.close_file()
        parsed = _verify(entry.path, instance)
        entry.commit()
        note_instance(instance, parsed, entry.size)
    finally:
        entry.abort()  # no-op after commit
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _from_source(instance, chunk_size: int, connector=None) -> Fetch:
    endpoint = _endpoint(instance)
    series = instance.series
    body = (connector or connector_for(endpoint)).retrieve_instance(
        series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid, chunk_size=chunk_size)
    return _fill_from(body, endpoint, instance)


def _fill_from(body: Iterator[bytes], endpoint, instance, head_read: tuple[str, list[bytes]] | None = None) -> Fetch:
    """A Fetch passing ``body`` on while filling the instance's cache entry. ``head_read``: the
    transfer syntax and the chunks already read from ``body`` (to learn which instance it is)."""
    try:
        entry = cache.TempEntry(endpoint.pk, instance.sop_instance_uid)
    except BaseException:
        getattr(body, "close", lambda: None)()
        raise
    if head_read is not None:
        ts, head = head_read
        filling = _filling(_chain(head, body), entry, instance)
    else:
        filling = _filling(iter(body), entry, instance)
        try:
            ts, _, head = _peek(filling)
        except BaseException:
            filling.close()
            raise
    return Fetch(ts, [] if head_read is not None else head, filling, from_cache=False, closer=filling.close,
                 instance=instance, fetched=True)


def _chain(head: list[bytes], body: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from head
        yield from body
    finally:
        getattr(body, "close", lambda: None)()


_UNREACHABLE = {ErrorCode.DNS, ErrorCode.REFUSED, ErrorCode.TIMEOUT, ErrorCode.TLS, ErrorCode.AUTH, ErrorCode.CONFIG}

# A series is fetched whole (one request) when at least this many of its instances are wanted
# and not cached, and they are at least half of the series: fewer, and one request per
# instance moves fewer bytes than the whole series would.
SERIES_MIN_INSTANCES = 2


def _series_from_source(connector, endpoint, series, wanted: dict, chunk_size: int) -> Iterator[Fetch]:
    """Fetches of the ``wanted`` instances (SOP Instance UID -> Instance) of one series, from one
    WADO-RS Retrieve Series, in the order the archive sends them; each filled into the cache as
    it streams. A part that is not a wanted instance (one the index does not know, or one
    already sent) is read past, never handed on. The caller fetches the instances the archive
    did not send one by one."""
    parts = connector.retrieve_series(series.study.study_instance_uid, series.series_instance_uid, chunk_size=chunk_size,
                                      sop_classes=sorted({i.sop_class_uid for i in wanted.values() if i.sop_class_uid}))
    try:
        for part in parts:
            ts, sop_uid, head = _peek(part)
            instance = wanted.pop(sop_uid, None)
            if instance is None:
                for _ in part:
                    pass
                continue
            fetch = _fill_from(part, endpoint, instance, head_read=(ts, head))
            try:
                yield fetch
            finally:
                fetch.close()  # a consumer that left the part early: its entry is dropped, the part read past
    finally:
        parts.close()


def _local(instance, chunk_size: int) -> Fetch:
    fetch = _from_storage(instance, chunk_size)
    fetch.instance = instance
    return fetch


def open_instances(instances, *, chunk_size: int = CHUNK) -> Iterator[Fetch]:
    """A Fetch for each of ``instances`` (stored, cached, or from its archive), each once, opened
    only when the iteration reaches it; close each Fetch (or read it to the end) before taking
    the next. Instances are taken series by series as given. Where enough of a series is
    neither stored nor cached (SERIES_MIN_INSTANCES, half the series) and its archive can
    (DICOMweb), the series comes in one request (PS3.18 §10.4.1.1.1 Retrieve Series) after the
    series' cached instances, in the archive's order; the instances it did not send follow one
    request each. One connector (one HTTP session, kept alive) per archive for the whole call."""
    connectors: dict[int, object] = {}

    def connector(endpoint):
        if endpoint.pk not in connectors:
            connectors[endpoint.pk] = connector_for(endpoint)
        return connectors[endpoint.pk]

    group: list = []
    for instance in [*instances, None]:
        if group and (instance is None or instance.series_id != group[0].series_id):
            yield from _open_group(group, chunk_size, connector)
            group = []
        if instance is not None:
            group.append(instance)


def _open_group(group: list, chunk_size: int, connector) -> Iterator[Fetch]:
    """open_instances for the instances of one series."""
    series = group[0].series
    if moves_to_platform(group[0]):
        yield from _open_moved_group(group, chunk_size, connector)
        return
    pending = [i for i in group if is_remote(i) and not is_cached(i)]
    endpoint = series.study.source_endpoint
    whole = (endpoint is not None and len(pending) >= max(SERIES_MIN_INSTANCES, series.num_instances / 2)
             and connector(endpoint).retrieves_series)
    if not whole:
        for instance in group:
            yield _open_one(instance, chunk_size, connector)
        return
    for instance in group:
        if instance not in pending:
            yield _open_one(instance, chunk_size, connector)
    sent: set[str] = set()
    try:
        for fetch in _series_from_source(connector(endpoint), endpoint, series,
                                         {i.sop_instance_uid: i for i in pending}, chunk_size):
            sent.add(fetch.instance.sop_instance_uid)
            yield fetch
    except ConnectorError as exc:
        # An archive that refuses the series request itself (an HTTP error, a malformed or empty
        # answer) may still serve instances one by one; one that cannot be reached will not.
        if sent or exc.code in _UNREACHABLE:
            raise
        log.info("series retrieve from endpoint %s failed (%s): one request per instance", endpoint.pk, exc.code)
    for instance in pending:
        if instance.sop_instance_uid not in sent:  # not in the archive's series answer
            yield _open_one(instance, chunk_size, connector)


def _open_moved_group(group: list, chunk_size: int, connector) -> Iterator[Fetch]:
    """A series of a C-MOVE archive: the stored instances from storage, then, if enough are
    not stored yet, one C-MOVE of the series and its instances from storage once it is done;
    whatever the series move did not bring is moved one by one."""
    series = group[0].series
    pending = [i for i in group if is_remote(i)]
    for instance in group:
        if instance not in pending:
            yield _open_one(instance, chunk_size, connector)
    if len(pending) < max(SERIES_MIN_INSTANCES, series.num_instances / 2):
        for instance in pending:
            yield _open_one(instance, chunk_size, connector)
        return
    endpoint = _endpoint(pending[0])
    arrived: set[int] = set()
    for fetch in _moved_series(connector(endpoint), endpoint, series, pending, chunk_size):
        arrived.add(fetch.instance.pk)
        yield fetch
    for instance in pending:
        if instance.pk not in arrived:
            yield _open_one(instance, chunk_size, connector)


def _moved_series(connector, endpoint, series, pending: list, chunk_size: int) -> Iterator[Fetch]:
    """C-MOVE of the series to the platform's SCP (PS3.4 C.4.2, SERIES level); after its final
    response, each pending instance the ingest has adopted is handed on from storage (the SCP
    commits before it answers each C-STORE, so normally all are there; the rest are waited for
    up to the endpoint's timeout, as move_to_platform does). A failed move raises its
    ConnectorError; a "success" with nothing arrived raises not_delivered. The index is read only
    after the move: reading it while the SCP writes would compete with the ingest (and, on an
    in-memory SQLite database, make its writes fail)."""
    result = connector.move_series(series.study.study_instance_uid, series.series_instance_uid, instances=len(pending))
    waiting = {i.pk: i for i in pending}
    grace = float(endpoint.timeout or 30)
    deadline = time.monotonic() + grace
    sent = 0
    while waiting:
        for row in Instance.objects.filter(pk__in=list(waiting)).exclude(storage_key="").values("pk", *_STORED_FIELDS):
            instance = waiting.pop(row.pop("pk"))
            for name, value in row.items():
                setattr(instance, name, value)
            fetch = _local(instance, chunk_size)
            fetch.fetched = True
            sent += 1
            yield fetch
        if not waiting or (sent and result.completed is not None and sent >= result.completed):
            return  # what the archive did not send: one by one, by the caller
        if time.monotonic() >= deadline:
            if sent:
                return
            from exchange.federation.connectors.move import not_delivered

            raise not_delivered(f"The archive reported the C-MOVE of the series as done, but no instance arrived at the "
                                f"platform within {grace:g} s.")
        time.sleep(POLL_SECONDS)


def _open_one(instance, chunk_size: int, connector) -> Fetch:
    if not is_remote(instance):
        return _local(instance, chunk_size)
    fetch = _from_cache(instance, chunk_size)
    if fetch is not None:
        fetch.instance = instance
        return fetch
    if moves_to_platform(instance):
        moved = move_to_platform(instance)
        fetch = _local(instance, chunk_size)
        fetch.fetched = moved
        return fetch
    return _from_source(instance, chunk_size, connector(_endpoint(instance)))


@dataclass
class Warmed:
    fetched: int = 0  # instances brought from their archive now
    bytes: int = 0  # their size
    there: int = 0  # instances already stored or cached


def warm(instances, counts: Warmed | None = None) -> Warmed:
    """Bring the remote ``instances`` into the cache (or, for a C-MOVE archive, the platform's
    storage) with as few requests as open_instances makes; cached ones are only touched (kept
    warm), not read. ``counts`` is filled as it goes, so it tells what moved before a
    ConnectorError."""
    counts = counts if counts is not None else Warmed()
    cold = []
    for instance in instances:
        if not is_remote(instance):
            counts.there += 1
        elif (endpoint_id := instance.series.study.source_endpoint_id) is not None \
                and cache.lookup(endpoint_id, instance.sop_instance_uid) is not None:
            counts.there += 1
        else:
            cold.append(instance)
    for fetch in open_instances(cold):
        n = 0
        for chunk in fetch.chunks():
            n += len(chunk)
        if fetch.fetched:
            counts.fetched, counts.bytes = counts.fetched + 1, counts.bytes + n
        else:
            counts.there += 1
    return counts


def instance_path(instance) -> str:
    """A file holding the instance, to read frames or headers from (fetch-then-serve for remote
    instances; the caller should read it soon: a cache entry can be evicted later)."""
    if not is_remote(instance):
        return str(storage.path_for(instance.storage_key))
    endpoint = _endpoint(instance)
    path = cache.lookup(endpoint.pk, instance.sop_instance_uid)
    if path is None and moves_to_platform(instance):
        move_to_platform(instance)
        return str(storage.path_for(instance.storage_key))
    if path is None:
        for _ in _from_source(instance, CHUNK).chunks():  # fill the cache entry
            pass
        path = cache.lookup(endpoint.pk, instance.sop_instance_uid)
        if path is None:  # evicted at once: a cache smaller than one instance
            raise ConnectorError(ErrorCode.CONFIG, "The retrieve cache is too small to hold this instance "
                                 "(EXCHANGE_PROXY_CACHE_BYTES).")
    elif not instance.transfer_syntax_uid:
        # Cached by an earlier fill whose row update this copy of the row does not show.
        note_instance(instance, _verify(path, instance), path.stat().st_size)
    return str(path)
