"""Normalisation of identity attributes (exchange.mpi.normalize): pure functions, no database."""

from datetime import date

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files

from exchange.mpi.normalize import (
    birth_date_normalize,
    name_keys,
    phone_normalize,
    ric_birth_date,
    ric_check_char,
    ric_normalize,
    ric_sex,
)

VALID = "320121198503121217"  # region 320121, born 1985-03-12, sequence 121 (odd: male), check 7


# --- Resident Identity Card ---------------------------------------------------------------


def test_valid_number_is_normalised_upper_case():
    assert ric_normalize(" 11010519491231002x ") == ("11010519491231002X", "valid")
    assert ric_normalize(VALID) == (VALID, "valid")


def test_fifteen_digit_legacy_number_is_upgraded():
    # given 320121 850312 121: region, YYMMDD, sequence
    # then '19' inserted before the year and MOD 11-2 over 32012119850312121 gives 7
    assert ric_check_char("32012119850312121") == "7"
    assert ric_normalize("320121850312121") == (VALID, "valid")


def test_wrong_check_character_is_invalid():
    assert ric_normalize(VALID[:-1] + "8") == (None, "invalid")
    # one mistyped digit anywhere is caught by ISO 7064 MOD 11-2
    assert ric_normalize(VALID[:15] + "3" + VALID[16:]) == (None, "invalid")


@pytest.mark.parametrize("value", ["32012119850312121", "3201211985031212170", "320121198502301215",
                                   "990121198503121217", "32012119850312121A", "abc"])
def test_wrong_length_date_region_or_characters_are_invalid(value):
    assert ric_normalize(value)[1] == "invalid"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_number_is_missing(value):
    assert ric_normalize(value) == (None, "missing")


def test_birth_date_and_sex_inside_the_number():
    assert ric_birth_date(VALID) == date(1985, 3, 12)
    assert ric_sex(VALID) == "M"
    female = "32012119850312122"
    assert ric_sex(female + ric_check_char(female)) == "F"


# --- Names ---------------------------------------------------------------------------------


def test_dicom_pn_groups_and_components():
    keys = name_keys("Wang^XiaoDong=王^小东")
    assert (keys.family_pinyin, keys.given_pinyin, keys.full_pinyin) == ("wang", "xiaodong", "wangxiaodong")
    assert keys.hanzi == "王小东"
    assert keys.initials == "wx"


def test_separate_groups_equal_whole_pn():
    assert name_keys(alphabetic="Wang^XiaoDong", ideographic="王^小东") == name_keys("Wang^XiaoDong=王^小东")


@pytest.mark.parametrize("written", ["WANG^XIAODONG", "wang xiaodong", "Wáng^Xiǎodōng", "ＷＡＮＧ^ＸＩＡＯＤＯＮＧ",
                                     "Wang^Xiao Dong", "Wang^Xiao-Dong", "wangxiaodong"])
def test_case_tone_space_and_full_width_folding(written):
    assert name_keys(written).full_pinyin == "wangxiaodong"


@pytest.mark.parametrize("hanzi,reading", [
    ("单", "shan"), ("曾", "zeng"), ("区", "ou"), ("解", "xie"), ("仇", "qiu"), ("朴", "piao"),
    ("查", "zha"), ("盖", "ge"), ("尉迟", "yuchi"), ("万俟", "moqi"), ("乐", "yue"), ("缪", "miao"),
])
def test_polyphonic_surnames_use_the_surname_reading(hanzi, reading):
    keys = name_keys(ideographic=f"{hanzi}^小东")
    assert keys.family_pinyin == reading
    assert keys.full_pinyin == reading + "xiaodong"


def test_compound_surname_without_component_separator():
    keys = name_keys(ideographic="尉迟敬德")
    assert (keys.family_pinyin, keys.given_pinyin) == ("yuchi", "jingde")


@pytest.mark.parametrize("written", ["XiaoDong^Wang", "Xiaodong Wang"])
def test_swapped_given_and_family_order(written):
    keys = name_keys(written)
    assert keys.full_pinyin == "wangxiaodong"
    assert keys.swapped_pinyin == "xiaodongwang"


def test_traditional_characters_have_the_same_pinyin():
    assert name_keys(ideographic="王^小東").full_pinyin == name_keys(ideographic="王^小东").full_pinyin


@pytest.mark.parametrize("filename,ideographic", [("chrX1.dcm", "王^小東"), ("chrX2.dcm", "王^小东")])
def test_charset_file_names_match_their_pinyin(filename, ideographic):
    # chrX1 is UTF-8 (ISO_IR 192, traditional 東), chrX2 is GB18030
    ds = dcmread(get_charset_files(filename)[0])
    assert str(ds.PatientName) == f"Wang^XiaoDong={ideographic}"
    hanzi_only = name_keys(ideographic=str(ds.PatientName).split("=")[1])
    assert hanzi_only.full_pinyin == name_keys("Wang^XiaoDong").full_pinyin == "wangxiaodong"


# --- Phone and birth date ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["13812345678", "+86 138-1234-5678", "0086 13812345678",
                                   "8613812345678", "138 1234 5678", "１３８１２３４５６７８"])
def test_phone_is_folded_to_eleven_digits(value):
    assert phone_normalize(value) == "13812345678"


@pytest.mark.parametrize("value", [None, "", "12345", "02512345678", "2381234567", "1381234567x"])
def test_implausible_phone_is_none(value):
    assert phone_normalize(value) is None


@pytest.mark.parametrize("value", ["19850312", "1985-03-12", "1985/3/12", date(1985, 3, 12)])
def test_birth_date_formats(value):
    assert birth_date_normalize(value) == date(1985, 3, 12)


@pytest.mark.parametrize("value", [None, "", "19850230", "1985031", "not a date", "00000000"])
def test_bad_birth_dates_are_none(value):
    assert birth_date_normalize(value) is None
