"""Record linkage for the master patient index: one rule and one probabilistic model.

1. Resident Identity Card number (RIC). Two records carrying the same *valid* number are the same
   person ('ric-match'); two records carrying different valid numbers never are ('ric-conflict'),
   whatever their names say (twins, reused local ids). A number failing its check character is
   ignored (its status is kept for stewards).
2. Otherwise a Fellegi–Sunter model: each field comparison falls into an agreement level whose
   weight is log2(m/u), m = P(level | same person), u = P(level | different persons). The
   score is the sum; two thresholds split link / review / new. The weights and how they were
   measured are in docs/decisions/0008-mpi-matching.md. The exact-name weight is frequency
   adjusted: agreeing on 王伟 is worth much less than agreeing on 尉迟敬德, because u for an exact
   agreement on a value is the share of records carrying that value.

Local patient ids are hospital-scoped and are not evidence across hospitals.

``Matcher`` is the in-memory version used by the bench and tests; the database version mirrors
it: ``blocking_keys`` are the indexed lookup keys, ``compare`` scores each candidate.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from enum import Enum

from exchange.mpi.normalize import (
    RIC_VALID,
    birth_date_normalize,
    name_keys,
    phone_normalize,
    ric_birth_date,
    ric_normalize,
    ric_sex,
    sex_normalize,
)

# --- Weights (log2 likelihood ratios); see docs/decisions/0008-mpi-matching.md ------------

# Name. The exact level's weight is log2(M_NAME_EXACT / f(name)), f = the name's share of records.
M_NAME_EXACT = 0.93
NAME_FREQ_FLOOR = 2e-5  # an unseen name is not treated as rarer than 1 in 50,000 records
NAME_FREQ_DEFAULT = 1e-3  # when the caller knows nothing about the name's frequency
NAME_FREQ_PRIOR = 2e-4  # share of a typical name before the index has seen enough records
NAME_FREQ_PSEUDO = 5000
W_NAME_HOMOPHONE = -0.5  # both in hanzi, different characters, same pinyin: added to the exact weight
W_NAME_TYPO = 7.0  # pinyin within one edit (substitution, insertion, deletion, transposition)
W_NAME_GIVEN_TYPO = 0.0  # same surname, given name one edit apart: twins look exactly like this
W_NAME_FAMILY_ONLY = -12.0  # same surname, different given name: siblings, twins, parent/child
W_NAME_DISAGREE = -14.0

# Birth date.
W_BIRTH_EXACT = 14.0
W_BIRTH_SWAPPED = 9.5  # day and month exchanged
W_BIRTH_YEAR_MONTH = 1.0  # same year and month, other day
W_BIRTH_ONE_DIGIT = 4.0  # one digit of YYYYMMDD differs (year or day mistyped)
W_BIRTH_DISAGREE = -12.0

# Sex.
W_SEX_AGREE = 0.9
W_SEX_DISAGREE = -7.0

# Phone: shared by families, changed over time, so disagreement is weak evidence.
W_PHONE_AGREE = 6.0
W_PHONE_DISAGREE = -2.5

# Identity number rule: added so a ric-match always sorts above any demographic score.
W_RIC_MATCH = 40.0
W_RIC_CONFLICT = -40.0

DEFAULT_LINK_THRESHOLD = 23.0
DEFAULT_REVIEW_THRESHOLD = 14.0


def name_frequency(count: int, total: int) -> float:
    """Share of records carrying a name key, as used by ``compare(name_freq=...)``.

    ``count`` is how many indexed records have the same ``Prepared.name_key`` and ``total`` how
    many records are indexed.
    """
    # Smoothed towards NAME_FREQ_PRIOR with NAME_FREQ_PSEUDO pseudo-records, so a young index
    # neither over-trusts a name it has seen once nor under-trusts one it has not seen yet.
    count, total = max(count, 0), max(total, 0)
    return max((count + NAME_FREQ_PRIOR * NAME_FREQ_PSEUDO) / (total + NAME_FREQ_PSEUDO), NAME_FREQ_FLOOR)


# --- Records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    record_id: str
    hospital: str
    local_id: str
    name_alphabetic: str = ""
    name_ideographic: str = ""
    name_phonetic: str = ""
    birth_date: date | None = None
    sex: str = ""
    ric: str | None = None  # as received; normalised inside
    phone: str | None = None

    @classmethod
    def from_pn(cls, record_id: str, hospital: str, local_id: str, pn: str = "", **kwargs) -> Record:
        """A record from a whole DICOM PN value 'Wang^XiaoDong=王^小东=...'."""
        groups = (str(pn or "").split("=") + ["", "", ""])[:3]
        return cls(record_id, hospital, local_id, groups[0], groups[1], groups[2], **kwargs)


@functools.lru_cache(maxsize=65536)
def _name_keys(alphabetic: str, ideographic: str, phonetic: str):
    # pypinyin dominates prepare(); names repeat a lot (王伟), so remember recent ones.
    return name_keys(alphabetic=alphabetic or "", ideographic=ideographic or "", phonetic=phonetic or "")


class Prepared:
    """Normalised comparison features of one record (computed once, compared many times)."""

    __slots__ = (
        "record_id", "hospital", "local_id", "ric", "ric_status", "hanzi", "family", "given",
        "full", "forms", "name_source", "initials", "birth", "birth_key", "birth_digits", "sex",
        "phone", "name_key",
    )

    def __init__(self, r: Record):
        self.record_id = r.record_id
        self.hospital = r.hospital
        self.local_id = r.local_id
        self.ric, self.ric_status = ric_normalize(r.ric)
        keys = _name_keys(r.name_alphabetic, r.name_ideographic, r.name_phonetic)
        self.hanzi = keys.hanzi
        self.family = keys.family_pinyin
        self.given = keys.given_pinyin
        self.full = keys.full_pinyin
        self.name_key = keys.full_pinyin
        forms = {keys.full_pinyin, *keys.alt_pinyin}
        if keys.swapped_pinyin:
            forms.add(keys.swapped_pinyin)
        forms.discard("")
        self.forms = frozenset(forms)
        self.name_source = keys.source
        self.initials = keys.initials
        birth = birth_date_normalize(r.birth_date)
        sex = sex_normalize(r.sex)
        if self.ric:  # the number carries both; fill gaps (never override what was registered)
            birth = birth or ric_birth_date(self.ric)
            sex = sex or ric_sex(self.ric)
        self.birth = birth
        self.birth_digits = birth.strftime("%Y%m%d") if birth else ""
        if birth:
            lo, hi = sorted((birth.month, birth.day))
            self.birth_key = f"{birth.year:04d}{lo:02d}{hi:02d}"  # day/month order ignored
        else:
            self.birth_key = ""
        self.sex = sex
        self.phone = phone_normalize(r.phone)

    def __repr__(self) -> str:  # never the number or phone: reprs end up in logs
        return f"Prepared({self.record_id!r}, {self.hospital!r}, name={self.full!r})"


def prepare(r: Record) -> Prepared:
    return Prepared(r)


# --- Comparison -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    total: float
    breakdown: dict[str, float] = field(default_factory=dict)
    rule: str | None = None  # 'ric-match', 'ric-conflict' or None
    levels: dict[str, str] = field(default_factory=dict)  # field -> agreement level, for reviewers


class Outcome(str, Enum):
    LINK = "link"
    REVIEW = "review"
    NEW = "new"


def _within_one_edit(a: str, b: str) -> bool:
    """Damerau–Levenshtein distance ≤ 1 (one substitution, insertion, deletion or transposition)."""
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) <= 1:
            return True
        if len(diff) == 2 and diff[1] == diff[0] + 1:
            i = diff[0]
            return a[i] == b[i + 1] and a[i + 1] == b[i]
        return False
    if la > lb:
        a, b, la, lb = b, a, lb, la
    i = 0
    while i < la and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def _name_level(a: Prepared, b: Prepared) -> str:
    if not a.full or not b.full:
        return "missing"
    if a.hanzi and b.hanzi and a.hanzi == b.hanzi:
        return "exact"
    if a.forms & b.forms:
        if a.hanzi and b.hanzi:
            return "homophone"  # 小东/小東, or a homophone character chosen from the input method
        return "exact"
    # A one-letter typo can only come from typed pinyin: two hanzi names that differ in pinyin
    # are two different names (twins 小东/小冬 are not typos of each other).
    if not (a.name_source == "hanzi" and b.name_source == "hanzi"):
        for fa in a.forms:
            for fb in b.forms:
                if _within_one_edit(fa, fb):
                    # Same surname, given names one letter apart: a typo, or twins 小东/小彤
                    # (Xiaodong/Xiaotong) with the same birth date and phone. Never enough alone.
                    if a.family and a.family == b.family and a.given != b.given:
                        return "given-typo"
                    return "typo"
    if a.family and a.family == b.family:
        return "family-only"
    return "disagree"


def _birth_level(a: Prepared, b: Prepared) -> str:
    if not a.birth or not b.birth:
        return "missing"
    if a.birth == b.birth:
        return "exact"
    da, db = a.birth, b.birth
    if a.birth_key == b.birth_key:
        return "swapped"
    x, y = a.birth_digits, b.birth_digits
    if sum(1 for i in range(8) if x[i] != y[i]) == 1:
        return "one-digit"  # a mistyped digit (day 12 -> 13, year 1985 -> 1986)
    if da.year == db.year and da.month == db.month:
        return "year-month"
    return "disagree"


_BIRTH_W = {
    "exact": W_BIRTH_EXACT, "swapped": W_BIRTH_SWAPPED, "year-month": W_BIRTH_YEAR_MONTH,
    "one-digit": W_BIRTH_ONE_DIGIT, "disagree": W_BIRTH_DISAGREE, "missing": 0.0,
}


def name_exact_weight(name_freq: float | None) -> float:
    f = NAME_FREQ_DEFAULT if name_freq is None else max(name_freq, NAME_FREQ_FLOOR)
    return math.log2(M_NAME_EXACT / f)


def compare(a: Prepared, b: Prepared, *, name_freq: float | None = None) -> Score:
    """Score of the pair. ``name_freq``: share of records carrying a's name (``name_frequency``);
    None uses NAME_FREQ_DEFAULT (a fairly common name), which errs on the side of review."""
    rule = None
    if a.ric and b.ric:
        rule = "ric-match" if a.ric == b.ric else "ric-conflict"

    levels = {"name": _name_level(a, b), "birth_date": _birth_level(a, b)}
    name = levels["name"]
    if name == "exact":
        w_name = name_exact_weight(name_freq)
    elif name == "homophone":
        w_name = name_exact_weight(name_freq) + W_NAME_HOMOPHONE
    elif name == "typo":
        w_name = W_NAME_TYPO
    elif name == "given-typo":
        w_name = W_NAME_GIVEN_TYPO
    elif name == "family-only":
        w_name = W_NAME_FAMILY_ONLY
    elif name == "disagree":
        w_name = W_NAME_DISAGREE
    else:
        w_name = 0.0
    breakdown = {"name": w_name, "birth_date": _BIRTH_W[levels["birth_date"]]}

    if a.sex and b.sex:
        levels["sex"] = "agree" if a.sex == b.sex else "disagree"
        breakdown["sex"] = W_SEX_AGREE if a.sex == b.sex else W_SEX_DISAGREE
    else:
        levels["sex"], breakdown["sex"] = "missing", 0.0
    if a.phone and b.phone:
        levels["phone"] = "agree" if a.phone == b.phone else "disagree"
        breakdown["phone"] = W_PHONE_AGREE if a.phone == b.phone else W_PHONE_DISAGREE
    else:
        levels["phone"], breakdown["phone"] = "missing", 0.0

    if rule == "ric-match":
        levels["ric"], breakdown["ric"] = "agree", W_RIC_MATCH
    elif rule == "ric-conflict":
        levels["ric"], breakdown["ric"] = "conflict", W_RIC_CONFLICT
    else:
        levels["ric"], breakdown["ric"] = "missing", 0.0
    return Score(sum(breakdown.values()), breakdown, rule, levels)


def classify(score: Score, link: float = DEFAULT_LINK_THRESHOLD, review: float = DEFAULT_REVIEW_THRESHOLD) -> Outcome:
    if score.rule == "ric-match":
        return Outcome.LINK
    if score.rule == "ric-conflict":
        return Outcome.NEW
    if score.total >= link:
        return Outcome.LINK
    if score.total >= review:
        return Outcome.REVIEW
    return Outcome.NEW


def blocking_keys(p: Prepared) -> set[str]:
    """Lookup keys: a true match shares at least one with its record despite one error in any
    single field (typo in the name, day/month swap, missing number, order swap); each key is
    narrow enough that its block stays small at millions of records."""
    keys: set[str] = set()
    if p.ric:
        keys.add("ric:" + p.ric)
    if p.birth:
        ym = f"{p.birth.year:04d}{p.birth.month:02d}"
        # Birth date with day/month order ignored, plus sex: catches any name error.
        keys.add(f"bd:{p.birth_key}|{p.sex}")
        if p.family:
            keys.add(f"py:{p.family}|{ym}")  # catches day typos, given-name typos, hanzi/pinyin
        if p.given:
            keys.add(f"pyg:{p.given}|{ym}")  # catches surname typos with a day error
    elif p.full:
        keys.add("nm:" + p.full)
    if p.phone:
        keys.add("ph:" + p.phone)
    return keys


# --- In-memory matcher -------------------------------------------------------------------------


class Matcher:
    """Incremental matcher: ``match`` a record against everything ``add``-ed so far."""

    def __init__(self, link: float = DEFAULT_LINK_THRESHOLD, review: float = DEFAULT_REVIEW_THRESHOLD):
        self.link = link
        self.review = review
        self.blocks: dict[str, list[int]] = defaultdict(list)
        self.prepared: list[Prepared] = []
        self.cluster_of: list[str] = []
        self.cluster_rics: dict[str, set[str]] = defaultdict(set)
        self.name_counts: Counter[str] = Counter()
        self.by_id: dict[str, int] = {}
        self.candidates_compared: list[int] = []  # per match() call, for the bench
        self._next_cluster = 0
        self._last: tuple[str, Prepared] | None = None

    def _prepare(self, r: Record) -> Prepared:
        if self._last is not None and self._last[0] == r.record_id:
            return self._last[1]
        p = prepare(r)
        self._last = (r.record_id, p)
        return p

    def name_freq(self, p: Prepared) -> float:
        return name_frequency(self.name_counts[p.name_key], len(self.prepared))

    def match(self, r: Record) -> tuple[Outcome, str | None, Score | None]:
        p = self._prepare(r)
        candidates: set[int] = set()
        for key in blocking_keys(p):
            block = self.blocks.get(key)
            if block:
                candidates.update(block)
        self.candidates_compared.append(len(candidates))
        if not candidates:
            return Outcome.NEW, None, None
        freq = self.name_freq(p)
        best: tuple[float, str, Score] | None = None
        for i in candidates:
            q = self.prepared[i]
            cluster = self.cluster_of[i]
            score = compare(p, q, name_freq=freq)
            if score.rule == "ric-match":
                return Outcome.LINK, cluster, score
            if p.ric and self.cluster_rics[cluster] - {p.ric}:
                continue  # the cluster belongs to someone with another valid number
            if score.rule == "ric-conflict":
                continue
            if best is None or score.total > best[0]:
                best = (score.total, cluster, score)
        if best is None:
            return Outcome.NEW, None, None
        outcome = classify(best[2], self.link, self.review)
        return outcome, best[1], best[2]

    def add(self, r: Record, cluster: str | None = None) -> str:
        p = self._prepare(r)
        if cluster is None:
            self._next_cluster += 1
            cluster = f"c{self._next_cluster}"
        index = len(self.prepared)
        self.prepared.append(p)
        self.cluster_of.append(cluster)
        self.by_id[p.record_id] = index
        if p.ric:
            self.cluster_rics[cluster].add(p.ric)
        if p.name_key:
            self.name_counts[p.name_key] += 1
        for key in blocking_keys(p):
            self.blocks[key].append(index)
        return cluster
