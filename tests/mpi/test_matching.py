"""The patient-index matcher (exchange.mpi.matching): the rules that must hold, pure Python."""

from datetime import date

from pydicom import dcmread
from pydicom.data import get_charset_files

from exchange.mpi.matching import (
    DEFAULT_LINK_THRESHOLD,
    DEFAULT_REVIEW_THRESHOLD,
    Matcher,
    Outcome,
    Record,
    blocking_keys,
    classify,
    compare,
    name_frequency,
    prepare,
)
from exchange.mpi.normalize import ric_check_char

BORN = date(1985, 3, 12)


def ric(birth: date = BORN, sequence: str = "121", region: str = "320121") -> str:
    first17 = f"{region}{birth:%Y%m%d}{sequence}"
    return first17 + ric_check_char(first17)


def record(rid="a", hospital="H01", local_id="100001", alphabetic="Shan^XiaoDong", ideographic="单^小东",
           birth=BORN, sex="M", number=None, phone=None) -> Record:
    return Record(rid, hospital, local_id, alphabetic, ideographic, "", birth, sex, number, phone)


def score(a: Record, b: Record, freq=None):
    return compare(prepare(a), prepare(b), name_freq=freq)


def outcome(a: Record, b: Record, freq=None) -> Outcome:
    return classify(score(a, b, freq))


RARE = name_frequency(1, 1_000_000)  # a name seen once in a million records
COMMON = 0.004  # 王伟, 张伟, 李娜: a few per thousand records


# --- Identity card number -----------------------------------------------------------------


def test_valid_number_always_links_whatever_the_names():
    a = record("a", number=ric())
    b = record("b", hospital="H02", alphabetic="Li^Na", ideographic="李^娜", sex="F", birth=date(1990, 1, 1), number=ric())
    s = score(a, b)
    assert s.rule == "ric-match"
    assert classify(s) is Outcome.LINK


def test_legacy_fifteen_digit_number_links_with_its_eighteen_digit_form():
    a = record("a", number=ric())
    b = record("b", hospital="H02", number="320121850312121")
    assert score(a, b).rule == "ric-match"


def test_two_different_valid_numbers_never_link_even_with_identical_demographics():
    a = record("a", number=ric(sequence="121"), phone="13812345678")
    b = record("b", hospital="H02", number=ric(sequence="123"), phone="13812345678")
    s = score(a, b, RARE)
    assert s.rule == "ric-conflict"
    assert classify(s) is Outcome.NEW
    assert classify(s, link=-100, review=-200) is Outcome.NEW


def test_invalid_check_digit_is_neither_link_nor_conflict():
    good = ric()
    typo = good[:15] + str((int(good[15]) + 1) % 10) + good[16:]
    # given the same number with one digit mistyped and otherwise nothing in common
    a = record("a", number=good)
    b = record("b", hospital="H02", alphabetic="Li^Na", ideographic="李^娜", sex="F", birth=date(1990, 1, 1), number=typo)
    assert prepare(b).ric_status == "invalid" and prepare(b).ric is None
    s = score(a, b)
    assert s.rule is None
    assert classify(s) is Outcome.NEW
    # and with identical demographics it is the demographics, not the number, that link
    c = record("c", hospital="H02", number=typo, phone="13812345678")
    d = record("d", number=ric(sequence="123"), phone="13812345678")
    assert score(c, d, RARE).rule is None


# --- Probabilistic part --------------------------------------------------------------------------


def test_twins_are_never_auto_linked():
    # same birth date, same surname, same phone, different given names, no numbers
    a = record("a", alphabetic="Wang^HaoRan", ideographic="王^浩然", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="Wang^HaoYu", ideographic="王^浩宇", phone="13812345678")
    assert outcome(a, b, RARE) is Outcome.NEW
    # one of them registered in pinyin only
    c = record("c", hospital="H03", alphabetic="Wang^HaoYu", ideographic="", phone="13812345678")
    assert outcome(a, c, RARE) is not Outcome.LINK


def test_twins_one_letter_apart_in_hanzi_are_not_typos():
    a = record("a", alphabetic="", ideographic="王^小东", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="", ideographic="王^小彤", phone="13812345678")
    assert score(a, b).levels["name"] != "typo"
    assert outcome(a, b, RARE) is not Outcome.LINK


def test_same_local_id_at_two_hospitals_is_not_evidence():
    a = record("a", hospital="H01", local_id="100001")
    b = record("b", hospital="H02", local_id="100001", alphabetic="Zhao^Min", ideographic="赵^敏", sex="F",
               birth=date(1971, 8, 30))
    assert outcome(a, b) is Outcome.NEW
    assert "local_id" not in score(a, b).breakdown


def test_same_local_id_at_two_hospitals_links_when_demographics_match():
    a = record("a", hospital="H01", local_id="100001", phone="13812345678")
    b = record("b", hospital="H02", local_id="100001", phone="13812345678")
    assert outcome(a, b, RARE) is Outcome.LINK


def test_very_common_name_with_near_birth_date_is_not_auto_linked():
    a = record("a", alphabetic="Wang^Wei", ideographic="王^伟", birth=date(1975, 6, 3))
    for other in (date(1975, 6, 3), date(1975, 6, 13), date(1975, 6, 30)):
        b = record("b", hospital="H02", alphabetic="Wang^Wei", ideographic="王^伟", birth=other,
                   phone="13912345678")
        a_phone = record("a", alphabetic="Wang^Wei", ideographic="王^伟", birth=date(1975, 6, 3), phone="13812345678")
        assert outcome(a, b, COMMON) is not Outcome.LINK
        assert outcome(a_phone, b, COMMON) is not Outcome.LINK


def test_common_name_needs_more_evidence_than_a_rare_one():
    a = record("a", alphabetic="Wang^Wei", ideographic="王^伟")
    b = record("b", hospital="H02", alphabetic="Wang^Wei", ideographic="王^伟")
    assert score(a, b, COMMON).total < score(a, b, RARE).total
    assert outcome(a, b, COMMON) is not Outcome.LINK


def test_family_members_sharing_a_phone_are_not_linked_by_phone():
    father = record("a", alphabetic="Zeng^GuoQing", ideographic="曾^国庆", birth=date(1958, 10, 1), phone="13812345678")
    daughter = record("b", hospital="H02", alphabetic="Zeng^TingTing", ideographic="曾^婷婷", sex="F",
                      birth=date(1986, 4, 2), phone="13812345678")
    spouse = record("c", hospital="H03", alphabetic="Li^XiuYing", ideographic="李^秀英", sex="F",
                    birth=date(1960, 1, 5), phone="13812345678")
    assert outcome(father, daughter) is Outcome.NEW
    assert outcome(father, spouse) is Outcome.NEW


def test_hanzi_against_pinyin_only_links():
    a = record("a", phone="13812345678")
    b = record("b", hospital="H02", ideographic="", phone="13812345678")
    assert outcome(a, b, RARE) is Outcome.LINK


def test_one_letter_pinyin_typo_links():
    a = record("a", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="Shon^XiaoDong", ideographic="", phone="13812345678")
    assert score(a, b, RARE).levels["name"] == "typo"
    assert outcome(a, b, RARE) is Outcome.LINK


def test_one_letter_typo_in_the_given_name_goes_to_review():
    # indistinguishable from twins 小东/小党 without a number: a steward decides
    a = record("a", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="Shan^XiaoDang", ideographic="", phone="13812345678")
    assert score(a, b, RARE).levels["name"] == "given-typo"
    assert outcome(a, b, RARE) is Outcome.REVIEW


def test_swapped_day_and_month_links():
    a = record("a", phone="13812345678")
    b = record("b", hospital="H02", birth=date(1985, 12, 3), phone="13812345678")
    assert score(a, b, RARE).levels["birth_date"] == "swapped"
    assert outcome(a, b, RARE) is Outcome.LINK


def test_missing_number_links_when_the_rest_agrees():
    a = record("a", number=ric(), phone="13812345678")
    b = record("b", hospital="H02", number=None, phone="13812345678")
    assert outcome(a, b, RARE) is Outcome.LINK
    # even without a phone, a rare name with the same birth date and sex is enough
    c = record("c", hospital="H03", number=None, phone=None)
    assert outcome(a, c, RARE) is Outcome.LINK


def test_swapped_given_and_family_order_links():
    a = record("a", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="XiaoDong Shan", ideographic="", phone="13812345678")
    assert outcome(a, b, RARE) is Outcome.LINK


def test_charset_file_names_link_with_their_pinyin_spelling():
    pinyin = record("p", hospital="H02", alphabetic="Wang^XiaoDong", ideographic="", phone="13812345678")
    for filename in ("chrX1.dcm", "chrX2.dcm"):  # UTF-8 with 東, GB18030 with 东
        pn = str(dcmread(get_charset_files(filename)[0]).PatientName)
        hanzi = Record.from_pn("h", "H01", "1", "=" + pn.split("=")[1], birth_date=BORN, sex="M", phone="13812345678")
        s = score(hanzi, pinyin, RARE)
        assert s.levels["name"] == "exact"
        assert classify(s) is Outcome.LINK


def test_thresholds_split_three_ways():
    a = record("a")
    b = record("b", hospital="H02")
    s = score(a, b, RARE)
    assert classify(s, link=s.total, review=s.total - 1) is Outcome.LINK
    assert classify(s, link=s.total + 1, review=s.total) is Outcome.REVIEW
    assert classify(s, link=s.total + 2, review=s.total + 1) is Outcome.NEW
    assert DEFAULT_REVIEW_THRESHOLD < DEFAULT_LINK_THRESHOLD


def test_score_breakdown_names_each_field():
    s = score(record("a"), record("b", hospital="H02"))
    assert set(s.breakdown) == {"name", "birth_date", "sex", "phone", "ric"}
    assert abs(sum(s.breakdown.values()) - s.total) < 1e-9


def test_repr_hides_number_and_phone():
    text = repr(prepare(record("a", number=ric(), phone="13812345678")))
    assert ric() not in text and "13812345678" not in text


# --- Blocking and the in-memory matcher ------------------------------------------------------


def test_true_matches_share_a_blocking_key_despite_single_errors():
    base = prepare(record("a", number=ric(), phone="13812345678"))
    variants = [
        record("b", alphabetic="Shan^XiaoDang", ideographic=""),  # typo, pinyin only, no phone
        record("c", birth=date(1985, 12, 3)),  # day/month swapped
        record("d", alphabetic="Shen^XiaoDong", ideographic="", birth=date(1985, 3, 13)),  # surname typo + day
        record("e", alphabetic="XiaoDong^Shan", ideographic=""),  # order swapped
    ]
    for v in variants:
        assert blocking_keys(base) & blocking_keys(prepare(v)), v.record_id


def test_matcher_links_reviews_and_keeps_twins_apart():
    m = Matcher()
    first = record("a", number=ric(), phone="13812345678")
    assert m.match(first)[0] is Outcome.NEW
    cluster = m.add(first)
    same = record("b", hospital="H02", number=ric())
    result, found, s = m.match(same)
    assert (result, found, s.rule) == (Outcome.LINK, cluster, "ric-match")
    m.add(same, found)
    twin = record("c", hospital="H03", alphabetic="Shan^XiaoXi", ideographic="单^小西",
                  number=ric(sequence="123"), phone="13812345678")
    assert m.match(twin)[0] is Outcome.NEW
    twin_cluster = m.add(twin)
    assert twin_cluster != cluster
    # a record without a number matching the twin's demographics joins the twin, never the brother
    twin_again = record("d", hospital="H01", alphabetic="Shan^XiaoXi", ideographic="", phone="13812345678")
    result, found, _ = m.match(twin_again)
    assert found == twin_cluster


def test_matcher_never_joins_a_cluster_holding_another_valid_number():
    m = Matcher()
    a = record("a", number=ric(sequence="121"), phone="13812345678")
    cluster = m.add(a)
    b = record("b", hospital="H02", number=ric(sequence="123"), phone="13812345678")
    result, found, _ = m.match(b)
    assert result is not Outcome.LINK or found != cluster


def test_twins_one_letter_apart_in_pinyin_only_are_not_auto_linked():
    # 小东 Xiaodong and 小彤 Xiaotong: one record in pinyin only looks like a one-letter typo
    a = record("a", alphabetic="Wang^XiaoDong", ideographic="王^小东", phone="13812345678")
    b = record("b", hospital="H02", alphabetic="Wang^XiaoTong", ideographic="", phone="13812345678")
    s = score(a, b, RARE)
    assert s.levels["name"] == "given-typo"
    assert classify(s) is not Outcome.LINK
