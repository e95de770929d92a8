"""Normalisation of the identity attributes the patient index matches on.

Pure functions (no Django, no database) so the matcher, the generator in ``fixtures/`` and the
bench can all use them. The rules:

- Resident Identity Card number (GB 11643-1999): 18 characters, 6-digit region, YYYYMMDD birth
  date, 3-digit sequence (odd = male), ISO 7064 MOD 11-2 check character. 15-digit numbers issued
  before 1999 (YYMMDD, no check character) are upgraded by inserting ``19`` and computing the check.
- Names: DICOM PN (PS3.5 §6.2.1) groups ``alphabetic=ideographic=phonetic`` and ``^`` components;
  hanzi turned into pinyin with pypinyin, except the surname, whose reading comes from a table
  because many surnames are read differently from the same character in a word (单 Shan, 曾 Zeng,
  区 Ou ...). Case, tones, full-width letters, spaces and ü/v are folded away.
- Phone: 11-digit mainland mobile number.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime

from pypinyin import Style, lazy_pinyin

from exchange.studies.names import fold

# --- Resident Identity Card ---------------------------------------------------------------

RIC_VALID = "valid"
RIC_INVALID = "invalid"
RIC_MISSING = "missing"

# GB/T 2260 province-level codes (first two digits of the region code).
_PROVINCES = {
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
    "65", "71", "81", "82", "83",
}
_RIC_WEIGHTS = [2 ** (17 - i) % 11 for i in range(17)]


def ric_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _RIC_WEIGHTS))
    check = (12 - total % 11) % 11
    return "X" if check == 10 else str(check)


def _ric_date(digits8: str) -> date | None:
    try:
        born = date(int(digits8[:4]), int(digits8[4:6]), int(digits8[6:8]))
    except ValueError:
        return None
    return born if 1880 <= born.year <= 2100 else None


def ric_normalize(value: str | None) -> tuple[str | None, str]:
    """(18-character upper-case number, 'valid') or (None, 'invalid' | 'missing').

    An invalid number is not returned: a wrong check character means a typing error somewhere,
    and a number we cannot trust must not become a key (neither link nor conflict).
    """
    if value is None:
        return None, RIC_MISSING
    text = unicodedata.normalize("NFKC", str(value)).strip().upper()
    text = re.sub(r"[\s\-]", "", text)
    if not text:
        return None, RIC_MISSING
    if len(text) == 15 and text.isdigit():
        # Pre-1999 number: YYMMDD, all holders born in the 1900s.
        text17 = text[:6] + "19" + text[6:]
        text = text17 + ric_check_char(text17)
    if len(text) != 18 or not text[:17].isdigit() or text[17] not in "0123456789X":
        return None, RIC_INVALID
    if text[:2] not in _PROVINCES or _ric_date(text[6:14]) is None:
        return None, RIC_INVALID
    if ric_check_char(text[:17]) != text[17]:
        return None, RIC_INVALID
    return text, RIC_VALID


def ric_birth_date(number: str) -> date | None:
    """Birth date inside an 18-character number."""
    if not number or len(number) != 18:
        return None
    return _ric_date(number[6:14])


def ric_sex(number: str) -> str:
    """'M' if the 17th digit (sequence) is odd, 'F' if even, '' if unknown."""
    if not number or len(number) != 18 or not number[16].isdigit():
        return ""
    return "M" if int(number[16]) % 2 else "F"


# --- Names ---------------------------------------------------------------------------------

# Surname readings that differ from pypinyin's default reading of the character (or that
# pypinyin gets right only by luck), plus compound surnames. Used only for the family name.
SURNAME_READINGS: dict[str, str] = {
    "单": "shan", "曾": "zeng", "区": "ou", "解": "xie", "仇": "qiu", "朴": "piao", "查": "zha",
    "盖": "ge", "乐": "yue", "缪": "miao", "覃": "qin", "种": "chong", "秘": "bi", "召": "shao",
    "员": "yun", "都": "du", "繁": "po", "翟": "zhai", "万": "wan",
    "燕": "yan", "谌": "chen", "那": "na", "阚": "kan", "瞿": "qu", "黑": "he",
    "隗": "wei", "句": "gou", "汜": "si", "过": "guo", "折": "she", "牟": "mu", "重": "chong",
    "沈": "shen", "石": "shi", "薄": "bo", "柏": "bai", "贾": "jia", "纪": "ji", "卜": "bu",
    "曲": "qu", "藏": "zang", "尹": "yin", "占": "zhan", "车": "che",
    "尉迟": "yuchi", "万俟": "moqi", "长孙": "zhangsun", "令狐": "linghu", "欧阳": "ouyang",
    "司马": "sima", "上官": "shangguan", "诸葛": "zhuge", "皇甫": "huangfu", "夏侯": "xiahou",
    "东方": "dongfang", "慕容": "murong", "司徒": "situ", "公孙": "gongsun", "宇文": "yuwen",
    "澹台": "tantai", "单于": "chanyu", "呼延": "huyan", "端木": "duanmu", "南宫": "nangong",
}
COMPOUND_SURNAMES = {k for k in SURNAME_READINGS if len(k) == 2}

# Pinyin of common surnames, to tell the family name in 'Xiaodong Wang' or 'wangxiaodong'.
_COMMON_SURNAME_HANZI = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏"
    "吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱"
    "严覃武戴莫孔向汤单区解仇查朴盖乐缪"
)
SURNAME_PINYIN: set[str] = set()


def _fold_latin(text: str) -> str:
    """Lower-case ASCII letters only: tones, full-width, case, spaces, ü/v, hyphens gone."""
    text = (text or "").replace("ü", "u").replace("Ü", "u")
    folded = fold(text)  # NFKC + combining marks stripped + lower + no whitespace
    folded = folded.replace("v", "u")  # 'lv' (pypinyin), 'lyu' and 'lu' all mean 吕
    folded = re.sub(r"^([ln])yu", r"\1u", folded)
    return re.sub(r"[^a-z]", "", folded)


def surname_pinyin(family_hanzi: str) -> str:
    """Pinyin of a family name written in hanzi, with the surname reading."""
    if family_hanzi in SURNAME_READINGS:
        return SURNAME_READINGS[family_hanzi]
    out = []
    for char in family_hanzi:
        out.append(SURNAME_READINGS.get(char) or "".join(lazy_pinyin(char, style=Style.NORMAL)))
    return _fold_latin("".join(out))


for _c in _COMMON_SURNAME_HANZI:
    SURNAME_PINYIN.add(surname_pinyin(_c))
SURNAME_PINYIN.update(SURNAME_READINGS.values())
_SURNAME_BY_LENGTH = sorted(SURNAME_PINYIN, key=len, reverse=True)


def _is_hanzi(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff" or "\U00020000" <= char <= "\U0002ffff"


def has_hanzi(text: str) -> bool:
    return any(_is_hanzi(c) for c in text or "")


@dataclass(frozen=True)
class NameKeys:
    family_pinyin: str
    given_pinyin: str
    full_pinyin: str  # family + given, lower-case, no spaces or tones
    hanzi: str  # family + given hanzi as written ('' if none)
    initials: str  # first letter of family and of given
    swapped_pinyin: str = ""  # given + family: compare this too when the order may be swapped
    source: str = ""  # 'hanzi' if the pinyin was derived from hanzi, 'alphabetic', or ''
    alt_pinyin: tuple[str, ...] = ()  # further full forms (alphabetic group when hanzi was used)

    @property
    def empty(self) -> bool:
        return not self.full_pinyin


def _split_components(group: str) -> list[str]:
    return [c.strip() for c in group.split("^")]


def _hanzi_parts(group: str) -> tuple[str, str]:
    """(family, given) hanzi of an ideographic group."""
    text = unicodedata.normalize("NFKC", group).strip()
    comps = _split_components(text)
    if len(comps) >= 2 and comps[0]:
        family, given = comps[0], "".join(comps[1:3])
    else:
        whole = re.sub(r"[\s^·.]", "", text)
        # The family name is not marked: compound surnames are two characters.
        if whole[:2] in COMPOUND_SURNAMES and len(whole) > 2:
            family, given = whole[:2], whole[2:]
        else:
            family, given = whole[:1], whole[1:]
    family = re.sub(r"\s", "", family)
    given = re.sub(r"\s", "", given)
    return family, given


def _hanzi_given_pinyin(given: str) -> str:
    return _fold_latin("".join(lazy_pinyin(given, style=Style.NORMAL, errors="ignore")))


def _alphabetic_parts(group: str) -> tuple[str, str]:
    """(family, given) folded pinyin of an alphabetic group, family first."""
    text = unicodedata.normalize("NFKC", group).strip()
    comps = _split_components(text)
    if len(comps) >= 2 and any(comps[1:3]):
        family, given = _fold_latin(comps[0]), _fold_latin("".join(comps[1:3]))
        if family and family not in SURNAME_PINYIN and given in SURNAME_PINYIN:
            family, given = given, family  # 'XiaoDong^Wang'
        return family, given
    tokens = [_fold_latin(t) for t in re.split(r"[\s,^]+", comps[0] if comps else text)]
    tokens = [t for t in tokens if t]
    if not tokens:
        return "", ""
    if len(tokens) >= 2:
        if tokens[0] in SURNAME_PINYIN or tokens[-1] not in SURNAME_PINYIN:
            return tokens[0], "".join(tokens[1:])
        return tokens[-1], "".join(tokens[:-1])  # 'Xiaodong Wang'
    whole = tokens[0]
    for surname in _SURNAME_BY_LENGTH:  # 'wangxiaodong'
        if whole.startswith(surname) and len(whole) > len(surname) + 1:
            return surname, whole[len(surname):]
    return whole, ""


def name_keys(pn: str = "", *, alphabetic: str = "", ideographic: str = "", phonetic: str = "") -> NameKeys:
    """Comparison keys of one person name.

    ``pn`` is a whole DICOM PN value ('Wang^XiaoDong=王^小东'); its groups fill in any of the
    keyword groups not given. Hanzi, when present in any group, is the primary source of the
    pinyin (registrars mistype pinyin far more often than they pick a wrong character).
    """
    if pn:
        groups = (str(pn).split("=") + ["", "", ""])[:3]
        alphabetic = alphabetic or groups[0]
        ideographic = ideographic or groups[1]
        phonetic = phonetic or groups[2]
    hanzi_group = ""
    for group in (ideographic, alphabetic, phonetic):
        if group and has_hanzi(group):
            hanzi_group = group
            break
    latin_groups = [g for g in (alphabetic, phonetic) if g and not has_hanzi(g)]

    alt: list[str] = []
    if hanzi_group:
        fam_h, giv_h = _hanzi_parts(hanzi_group)
        family, given = surname_pinyin(fam_h), _hanzi_given_pinyin(giv_h)
        hanzi, source = fam_h + giv_h, "hanzi"
        for g in latin_groups:
            f2, g2 = _alphabetic_parts(g)
            if f2 + g2 and f2 + g2 != family + given:
                alt.append(f2 + g2)
    elif latin_groups:
        family, given = _alphabetic_parts(latin_groups[0])
        hanzi, source = "", "alphabetic"
        for g in latin_groups[1:]:
            f2, g2 = _alphabetic_parts(g)
            if f2 + g2 and f2 + g2 != family + given:
                alt.append(f2 + g2)
    else:
        return NameKeys("", "", "", "", "")
    full = family + given
    initials = (family[:1] + given[:1]) if full else ""
    swapped = given + family if given else ""
    return NameKeys(family, given, full, hanzi, initials, swapped, source, tuple(alt))


# --- Phone, birth date, sex ----------------------------------------------------------------

_MOBILE = re.compile(r"^1[3-9]\d{9}$")


def phone_normalize(value) -> str | None:
    """An 11-digit mainland mobile number, or None."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", str(value)).strip()
    if text.startswith("+"):
        text = text[1:]
    digits = re.sub(r"[\s\-().]", "", text)
    if not digits.isdigit():
        return None
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if _MOBILE.match(digits) else None


def birth_date_normalize(value) -> date | None:
    """DICOM DA 'YYYYMMDD', ISO 'YYYY-MM-DD' (or with '/' '.'), date or datetime; None otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = unicodedata.normalize("NFKC", str(value)).strip()
    m = re.match(r"^(\d{4})[-/.]?(\d{1,2})[-/.]?(\d{1,2})$", text)
    if not m or (len(text) == 8 and not text.isdigit()):
        return None
    if text.isdigit() and len(text) != 8:
        return None
    try:
        born = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    return born if 1880 <= born.year <= 2100 else None


def sex_normalize(value) -> str:
    """'M', 'F' or '' (DICOM 'O' and anything unknown carry no evidence)."""
    text = unicodedata.normalize("NFKC", str(value or "")).strip().upper()
    if text in ("M", "MALE", "男", "1"):
        return "M"
    if text in ("F", "FEMALE", "女", "2"):
        return "F"
    return ""
