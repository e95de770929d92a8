"""Person-name folding for search: hanzi or pinyin, with or without tones, case, full-width
letters, spaces or DICOM PN component separators (PS3.5 §6.2.1).

``search_key`` turns the groups of one PN value into the string stored in Study.name_search;
``wildcard_regex`` turns a QIDO PatientName pattern (PS3.4 C.2.2.2.4: ``*`` and ``?``) into a
regular expression over that string. Both sides use the same folding, so
``王^小东``, ``Wang^XiaoDong``, ``wang xiaodong`` and ``WÁNG*`` find the same patient.
"""

import re
import unicodedata

from pypinyin import Style, lazy_pinyin

SEPARATOR = "|"


def fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "")
    # Strip tone marks and other combining marks (Wáng -> wang) but keep CJK intact.
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\s|=]+", "", text)
    return text.rstrip("^")


def to_pinyin(ideographic: str) -> str:
    """Pinyin of a hanzi name, component by component (姓^名 -> xing^ming)."""
    parts = []
    for component in ideographic.split("^"):
        parts.append("".join(lazy_pinyin(component, style=Style.NORMAL, errors="default")))
    return "^".join(parts)


def search_key(alphabetic: str = "", ideographic: str = "", phonetic: str = "") -> str:
    variants: list[str] = []
    forms = [alphabetic, ideographic, phonetic]
    if ideographic and any("\u4e00" <= c <= "\u9fff" for c in ideographic):
        forms.append(to_pinyin(ideographic))
    for form in forms:
        folded = fold(form)
        if not folded:
            continue
        for variant in (folded, folded.replace("^", "")):
            if variant and variant not in variants:
                variants.append(variant)
    key = SEPARATOR + SEPARATOR.join(variants) + SEPARATOR if variants else ""
    return key[:600]


def wildcard_regex(pattern: str) -> str:
    """A regex over a search_key for a DICOM PN pattern; ``*`` any run, ``?`` one character."""
    folded = fold(pattern)
    body = []
    for char in folded:
        if char == "*":
            body.append(r"[^|]*")
        elif char == "?":
            body.append(r"[^|]")
        else:
            body.append(re.escape(char))
    return r"\|" + "".join(body) + r"\|"
