"""The synthetic population generator (fixtures/mpi_population.py)."""

from collections import Counter, defaultdict

import pytest

from exchange.mpi.normalize import ric_normalize
from fixtures.mpi_population import COMMON_NAMES, generate


@pytest.fixture(scope="module")
def population():
    return generate(3000, seed=11)


def test_same_seed_gives_the_same_population():
    assert generate(300, seed=5).records == generate(300, seed=5).records
    assert generate(300, seed=5).records != generate(300, seed=6).records


def test_truth_covers_every_record_and_about_1_6_records_per_person(population):
    assert set(population.truth) == {r.record_id for r in population.records}
    persons = set(population.truth.values())
    assert len(persons) == 3000
    assert 1.45 < len(population.records) / len(persons) < 1.75
    assert max(Counter(population.truth.values()).values()) == 3


@pytest.mark.parametrize("kind", ["typo", "pinyin_only", "hanzi_only", "swap_day_month", "missing_ric",
                                  "invalid_ric", "order_swap", "traditional", "changed_phone", "homophone"])
def test_every_error_kind_is_present(population, kind):
    assert population.kind_counts()[kind] > 0


def test_missing_and_invalid_number_rates(population):
    counts = population.kind_counts()
    n = len(population.records)
    assert 0.25 < counts["missing_ric"] / n < 0.35
    assert 0.003 < counts["invalid_ric"] / n < 0.02
    for r in population.records:
        status = ric_normalize(r.ric)[1]
        expected = "missing" if "missing_ric" in population.kinds[r.record_id] else (
            "invalid" if "invalid_ric" in population.kinds[r.record_id] else "valid")
        assert status == expected


def test_twins_share_birth_date_and_surname_but_not_given_name(population):
    twins = [p for p in population.persons if p.kind == "twin"]
    assert twins
    by_birth = defaultdict(list)
    for p in twins:
        by_birth[(p.birth_date, p.family)].append(p)
    pairs = [ps for ps in by_birth.values() if len(ps) >= 2]
    assert pairs
    for a, b, *_ in pairs:
        assert a.given != b.given and a.ric != b.ric


def test_family_members_share_a_phone(population):
    phones = Counter(p.phone for p in population.persons)
    assert any(count >= 2 for count in phones.values())


def test_very_common_names_recur_with_near_birth_dates(population):
    common = {f + g for f, g, _ in COMMON_NAMES}
    same_name = defaultdict(list)
    for p in population.persons:
        if p.family + p.given in common:
            same_name[p.family + p.given].append(p.birth_date)
    assert max(len(v) for v in same_name.values()) >= 5
    near = sum(1 for dates in same_name.values() for i, a in enumerate(dates) for b in dates[i + 1:]
               if abs((a - b).days) <= 31)
    assert near > 0


def test_same_local_id_is_reused_by_different_hospitals_for_different_people(population):
    holders = defaultdict(set)
    for r in population.records:
        holders[r.local_id].add((r.hospital, population.truth[r.record_id]))
    reused = [h for h in holders.values() if len({p for _, p in h}) > 1]
    assert reused
    # but never twice within one hospital
    per_hospital = Counter((r.hospital, r.local_id) for r in population.records)
    assert max(per_hospital.values()) == 1
