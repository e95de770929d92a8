"""HL7 v2 ADT identity feed (ER7 encoding): A01/A04 register, A08 update, A40 merge.

Reads PID-3 (patient identifier list, CX), PID-5 (names, XPN; a repetition in hanzi is the
ideographic group), PID-7 (birth date), PID-8 (sex), PID-13 (home phone, XTN) and, for A40,
MRG-1 (prior patient identifier). HL7 v2.5 §2.5 (message construction), §2.7 (escape
sequences), §3.3.2 (A40 Merge patient - patient identifier list).
"""

import re
from dataclasses import dataclass, field
from datetime import date

from exchange.mpi.identity import RIC_ISSUERS
from exchange.mpi.normalize import has_hanzi
from exchange.mpi.services import Demographics

SUPPORTED = {"A01", "A04", "A08", "A40"}
RIC_ID_TYPES = {"NNCHN", "RIC"}


class Hl7Error(ValueError):
    """The message cannot be used; the message text is fit to send back (no patient data)."""


@dataclass
class Message:
    trigger: str
    control_id: str
    sending_application: str = ""
    sending_facility: str = ""
    demographics: Demographics | None = None
    prior_local_id: str = ""  # MRG-1 (A40)
    foreign_ids: list = field(default_factory=list)


@dataclass
class _Delims:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


def _unescape(value: str, d: _Delims) -> str:
    if d.escape not in value:
        return value
    e = re.escape(d.escape)
    table = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    return re.sub(e + r"([FSTRE])" + e, lambda m: table[m.group(1)], value)


def _segments(text: str) -> tuple[_Delims, dict[str, list[list[str]]]]:
    lines = [line for line in re.split(r"\r\n|\r|\n", text.strip()) if line.strip()]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise Hl7Error("not an HL7 v2 message: the first segment must be MSH")
    header = lines[0]
    d = _Delims(field=header[3], component=header[4], repetition=header[5], escape=header[6], subcomponent=header[7])
    segments: dict[str, list[list[str]]] = {}
    for line in lines:
        parts = line.split(d.field)
        if line.startswith("MSH"):
            parts = ["MSH", d.field] + parts[1:]  # MSH-1 is the separator itself
        segments.setdefault(parts[0][:3], []).append(parts)
    return d, segments


def _field(seg: list[str], n: int) -> str:
    return seg[n] if len(seg) > n else ""


def _components(value: str, d: _Delims) -> list[str]:
    return value.split(d.component)


def _cx_list(value: str, d: _Delims) -> list[tuple[str, str, str]]:
    """(id, assigning authority, identifier type) of each CX repetition."""
    out = []
    for rep in value.split(d.repetition):
        comps = _components(rep, d) + [""] * 5
        ident = _unescape(comps[0], d).strip()
        authority = _unescape(comps[3].split(d.subcomponent)[0], d).strip()
        if not authority and d.subcomponent in comps[3]:
            authority = _unescape(comps[3].split(d.subcomponent)[1], d).strip()
        if ident:
            out.append((ident[:64], authority[:64], comps[4].strip().upper()))
    return out


def _names(value: str, d: _Delims) -> tuple[str, str]:
    alphabetic = ideographic = ""
    for rep in value.split(d.repetition):
        comps = [_unescape(c.split(d.subcomponent)[0], d).strip() for c in _components(rep, d)] + ["", ""]
        family, given = comps[0], " ".join(c for c in comps[1:3] if c)
        pn = family + ("^" + given if given else "")
        if not pn.strip("^"):
            continue
        if has_hanzi(pn):
            ideographic = ideographic or pn
        else:
            alphabetic = alphabetic or pn
    return alphabetic[:200], ideographic[:200]


def _birth(value: str) -> date | None:
    digits = value.strip()[:8]
    if not digits:
        return None
    if len(digits) != 8 or not digits.isdigit():
        raise Hl7Error("PID-7 birth date is not YYYYMMDD")
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise Hl7Error("PID-7 birth date is not a valid date") from None


def _phone(value: str, d: _Delims) -> str | None:
    for rep in value.split(d.repetition):
        comps = [_unescape(c, d).strip() for c in _components(rep, d)] + [""] * 12
        number = comps[0] or comps[11] or (comps[5] + comps[6])
        if number:
            return number[:64]
    return None


def parse(text: str, *, authority: str) -> Message:
    """Parse an ADT message for the hospital whose local ids have assigning authority ``authority``."""
    if not isinstance(text, str) or not text.strip():
        raise Hl7Error("empty message")
    d, segs = _segments(text)
    msh = segs["MSH"][0]
    msg_type = _components(_field(msh, 9), d) + ["", ""]
    if msg_type[0] != "ADT":
        raise Hl7Error("only ADT messages are accepted")
    trigger = msg_type[1]
    if trigger not in SUPPORTED:
        raise Hl7Error(f"ADT^{trigger[:3]} is not supported (A01, A04, A08, A40)")
    message = Message(trigger=trigger, control_id=_field(msh, 10)[:64],
                      sending_application=_field(msh, 3)[:64], sending_facility=_field(msh, 4)[:64])
    if "PID" not in segs:
        raise Hl7Error("the message has no PID segment")
    pid = segs["PID"][0]
    ids = _cx_list(_field(pid, 3), d)
    local = next((i for i, a, _ in ids if a == authority), None)
    if local is None:
        # Without an assigning authority the id is the sending hospital's own.
        local = next((i for i, a, t in ids if not a and t not in RIC_ID_TYPES), None)
    if not local:
        raise Hl7Error(f"PID-3 holds no identifier with assigning authority '{authority}'")
    ric = next((i for i, a, t in ids if a.upper() in RIC_ISSUERS or t in RIC_ID_TYPES), None)
    others = tuple((a, i) for i, a, t in ids if i != local and i != ric)[:20]
    alphabetic, ideographic = _names(_field(pid, 5), d)
    sex = _field(pid, 8).strip().upper()[:1]
    message.demographics = Demographics(
        local_id=local, issuer=authority, name_alphabetic=alphabetic, name_ideographic=ideographic,
        birth_date=_birth(_field(pid, 7)), sex=sex if sex in ("M", "F", "O") else "", ric=ric,
        phone=_phone(_field(pid, 13), d), other_ids=others,
    )
    if trigger == "A40":
        if "MRG" not in segs:
            raise Hl7Error("ADT^A40 needs an MRG segment")
        prior = _cx_list(_field(segs["MRG"][0], 1), d)
        prior_local = next((i for i, a, _ in prior if a in (authority, "")), None)
        if not prior_local:
            raise Hl7Error(f"MRG-1 holds no identifier with assigning authority '{authority}'")
        message.prior_local_id = prior_local
    return message


def ack(message: Message | None, code: str, text: str = "", *, now: str) -> str:
    """An ACK (MSA-1 AA accepted, AE error, AR rejected), segments separated by CR."""
    trigger = message.trigger if message else ""
    control = message.control_id if message else ""
    clean = re.sub(r"[|^~\\&\r\n]", " ", text)[:200]
    segments = [
        f"MSH|^~\\&|EXCHANGE|PROVINCE|{message.sending_application if message else ''}|"
        f"{message.sending_facility if message else ''}|{now}||ACK^{trigger}^ACK|{control or now}|P|2.5",
        f"MSA|{code}|{control}" + (f"|{clean}" if clean else ""),
    ]
    if code != "AA" and clean:
        segments.append(f"ERR|||207^Application internal error^HL70357|E||||{clean}")
    return "\r".join(segments) + "\r"
