"""The regulator's dashboard figures, their bar charts (server-rendered SVG) and CSV (issue #4).

All counting is done by the database (TruncMonth / Count, in settings.TIME_ZONE), so the figures
cost a handful of aggregate queries whatever the size of the trail.

Definitions (docs/decisions/0007-audit-exports.md):
- cross-hospital view: a successful INSTANCES_ACCESSED / INSTANCES_TRANSFERRED event whose actor's
  hospital is not the hospital holding the study; counted per (viewing, holding) pair and month.
- denied attempt: an ACCESS_DENIED event.
- break-glass rate: BREAK_GLASS events / access events (instances accessed or transferred).
- study reused (mutual recognition): the first time a clinician of hospital B opens a study held
  by hospital A; each (study, viewing hospital) pair counts once, in the month of its first view,
  as one examination hospital B did not repeat. Saving = reused × settings.AUDIT_PRICE_PER_EXAM.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef
from django.db.models.functions import TruncMonth

from audit import anomalies
from audit.models import AuditEvent, Event, Outcome
from audit.selectors import ACCESS_EVENTS, day_start, local_tz
from hospitals.models import Role

# Okabe-Ito: distinguishable with colour-blindness and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, n: int) -> date:
    index = day.year * 12 + day.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def months_between(first: date, last: date) -> list[date]:
    months, month = [], month_start(first)
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


def default_period(today: date | None = None) -> tuple[date, date]:
    """The last twelve months, this one included."""
    today = today or datetime.now(local_tz()).date()
    return add_months(month_start(today), -11), today


def _month_key(value) -> date:
    if isinstance(value, datetime):
        return value.astimezone(local_tz()).date().replace(day=1)
    return value.replace(day=1)


def _by_month(qs) -> dict[date, int]:
    rows = (qs.annotate(month=TruncMonth("timestamp", tzinfo=local_tz())).values("month")
            .annotate(n=Count("id")).order_by())
    return {_month_key(r["month"]): r["n"] for r in rows}


@dataclass
class Dashboard:
    date_from: date
    date_to: date
    months: list[date]
    cross_hospital: dict[tuple[str, str], dict[date, int]]  # (viewing, holding) -> month -> views
    denied: dict[date, int]
    access: dict[date, int]
    break_glass: dict[date, int]
    reused: dict[date, int]
    price_per_exam: float
    flags: dict[str, list] = field(default_factory=dict)

    @property
    def reused_total(self) -> int:
        return sum(self.reused.values())

    @property
    def saving(self) -> float:
        return self.reused_total * self.price_per_exam

    @property
    def cross_hospital_total(self) -> int:
        return sum(sum(by_month.values()) for by_month in self.cross_hospital.values())

    @property
    def denied_total(self) -> int:
        return sum(self.denied.values())

    @property
    def access_total(self) -> int:
        return sum(self.access.values())

    @property
    def break_glass_total(self) -> int:
        return sum(self.break_glass.values())

    @property
    def break_glass_rate(self) -> float:
        """Percent of access events that were break-glass; 0 when there was no access."""
        return rate(self.break_glass_total, self.access_total)

    def break_glass_rate_by_month(self) -> dict[date, float]:
        return {m: rate(self.break_glass.get(m, 0), self.access.get(m, 0)) for m in self.months}

    def cross_hospital_rows(self) -> list[tuple[str, str, list[int], int]]:
        """(viewing, holding, views per month in self.months, total) for the table."""
        return [(viewing, holding, [by_month.get(m, 0) for m in self.months], sum(by_month.values()))
                for (viewing, holding), by_month in self.cross_hospital.items()]

    def monthly_rows(self) -> list[dict]:
        rates = self.break_glass_rate_by_month()
        return [{"month": m, "denied": self.denied.get(m, 0), "access": self.access.get(m, 0),
                 "break_glass": self.break_glass.get(m, 0), "break_glass_rate": rates[m],
                 "reused": self.reused.get(m, 0), "saving": self.reused.get(m, 0) * self.price_per_exam}
                for m in self.months]


def rate(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def dashboard(date_from: date, date_to: date) -> Dashboard:
    """The figures for local days date_from..date_to (inclusive)."""
    start, end = day_start(date_from), day_start(date_to + timedelta(days=1))
    period = AuditEvent.objects.filter(timestamp__gte=start, timestamp__lt=end)
    access = period.filter(event__in=ACCESS_EVENTS, outcome=Outcome.SUCCESS)
    cross = (access.filter(actor_hospital__isnull=False, study__isnull=False)
             .exclude(actor_hospital=F("study__hospital")))

    pairs: dict[tuple[str, str], dict[date, int]] = defaultdict(dict)
    rows = (cross.annotate(month=TruncMonth("timestamp", tzinfo=local_tz()))
            .values("month", "actor_hospital__code", "study__hospital__code").annotate(n=Count("id")).order_by())
    for r in rows:
        pairs[(r["actor_hospital__code"], r["study__hospital__code"])][_month_key(r["month"])] = r["n"]

    # First cross-hospital view of a study by a clinician of a given hospital, over all time:
    # an earlier view (lower id) of the same study by the same hospital means it was already reused.
    clinician_views = AuditEvent.objects.filter(event__in=ACCESS_EVENTS, outcome=Outcome.SUCCESS,
                                                actor_role=Role.CLINICIAN)
    earlier = clinician_views.filter(study=OuterRef("study"), actor_hospital=OuterRef("actor_hospital"),
                                     id__lt=OuterRef("id"))
    first_reuses = cross.filter(actor_role=Role.CLINICIAN).filter(~Exists(earlier))

    return Dashboard(
        date_from=date_from,
        date_to=date_to,
        months=months_between(date_from, date_to),
        cross_hospital=dict(sorted(pairs.items())),
        denied=_by_month(period.filter(event=Event.ACCESS_DENIED)),
        access=_by_month(period.filter(event__in=ACCESS_EVENTS)),
        break_glass=_by_month(period.filter(event=Event.BREAK_GLASS)),
        reused=_by_month(first_reuses),
        price_per_exam=float(settings.AUDIT_PRICE_PER_EXAM),
        flags=anomalies.anomalies(start, end),
    )


# --- Charts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    series: str
    month: str
    value: float
    text: str


@dataclass
class Chart:
    """Geometry of a grouped bar chart, drawn by templates/audit/_chart.html as inline SVG."""

    title: str
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str]]  # (x centre, label)
    legend: list[tuple[str, str]]  # (label, colour)
    plot_left: int
    plot_right: int
    plot_bottom: int
    empty: bool


TICKS = 4


def _nice_step(value: float, integer: bool) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) so that TICKS steps cover value."""
    raw = value / TICKS
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw and (not integer or step == int(step)):
            return step
    return 10 * magnitude


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value:g}%"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def bar_chart(title: str, months: list[date], series: list[tuple[str, dict[date, float]]], *,
              percent: bool = False, width: int = 480, height: int = 220) -> Chart:
    left, right, top, bottom = 44, width - 6, 10, height - 24
    # Counts get whole-number ticks; a rate's axis stops at 100%.
    top_value = TICKS * _nice_step(max((v for _, values in series for v in values.values()), default=0),
                                   integer=not percent)
    if percent:
        top_value = min(top_value, 100.0)
    plot_w, plot_h = right - left, bottom - top
    group_w = plot_w / max(len(months), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    bars = []
    for i, (label, values) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        for m, month in enumerate(months):
            value = values.get(month, 0)
            h = plot_h * value / top_value
            bars.append(Bar(x=round(left + m * group_w + group_w * 0.1 + i * bar_w, 2), y=round(bottom - h, 2),
                            width=round(max(bar_w - 1, 1), 2), height=round(h, 2), color=color, series=label,
                            month=month.strftime("%Y-%m"), value=value, text=_fmt(value, percent)))
    ticks = [(round(bottom - plot_h * k / TICKS, 2), _fmt(top_value * k / TICKS, percent)) for k in range(TICKS + 1)]
    every = max(1, math.ceil(len(months) / 7))
    x_labels = [(round(left + (m + 0.5) * group_w, 2), month.strftime("%Y-%m"))
                for m, month in enumerate(months) if m % every == 0]
    return Chart(title=title, width=width, height=height, bars=bars, y_ticks=ticks, x_labels=x_labels,
                 legend=[(label, PALETTE[i % len(PALETTE)]) for i, (label, _) in enumerate(series)],
                 plot_left=left, plot_right=right, plot_bottom=bottom,
                 empty=not any(values for _, values in series))


def charts(d: Dashboard) -> dict[str, Chart]:
    return {
        "cross_hospital": bar_chart(
            "Cross-hospital views per month (viewing hospital → hospital holding the study)", d.months,
            [(f"{viewing} → {holding}", by_month) for (viewing, holding), by_month in d.cross_hospital.items()]),
        "denied": bar_chart("Denied access attempts per month", d.months, [("Denied", d.denied)]),
        "break_glass": bar_chart("Break-glass rate per month (% of access events)", d.months,
                                 [("Break-glass rate", d.break_glass_rate_by_month())], percent=True),
        "reused": bar_chart("Studies reused instead of repeated, per month", d.months, [("Reused", d.reused)]),
    }


# --- CSV ---------------------------------------------------------------------------------------

CSV_COLUMNS = ("section", "month", "viewing_hospital", "holding_hospital", "actor", "value", "detail")


def csv_rows(d: Dashboard):
    """The dashboard as tidy rows (one figure a row) under CSV_COLUMNS."""
    yield CSV_COLUMNS
    for (viewing, holding), by_month in d.cross_hospital.items():
        for month in d.months:
            if by_month.get(month):
                yield ("cross_hospital_views", f"{month:%Y-%m}", viewing, holding, "", by_month[month], "")
    rates = d.break_glass_rate_by_month()
    for month in d.months:
        key = f"{month:%Y-%m}"
        yield ("denied_attempts", key, "", "", "", d.denied.get(month, 0), "")
        yield ("access_events", key, "", "", "", d.access.get(month, 0), "")
        yield ("break_glass_events", key, "", "", "", d.break_glass.get(month, 0), "")
        yield ("break_glass_rate_percent", key, "", "", "", rates[month], "")
        yield ("studies_reused", key, "", "", "", d.reused.get(month, 0), "")
        yield ("estimated_saving", key, "", "", "", d.reused.get(month, 0) * d.price_per_exam, "")
    yield ("cross_hospital_views", "total", "", "", "", d.cross_hospital_total, "")
    yield ("denied_attempts", "total", "", "", "", d.denied_total, "")
    yield ("break_glass_rate_percent", "total", "", "", "", d.break_glass_rate, "")
    yield ("studies_reused", "total", "", "", "", d.reused_total, "")
    yield ("estimated_saving", "total", "", "", "", d.saving, f"price per exam {d.price_per_exam:g}")
    for kind, flags in d.flags.items():
        for flag in flags:
            when = flag.when.astimezone(local_tz()) if isinstance(flag.when, datetime) else flag.when
            yield (f"anomaly_{kind}", when.isoformat(), flag.hospital, "", flag.actor, flag.count, flag.description)
