"""The one masking rule for patient data (``prescreen.security.masking``): exact tables for names,
identifiers and birth dates, and properties that hold for any input by the documented rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prescreen.security.masking import MASK, mask_birth_date, mask_id, mask_name


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三丰", "张*丰"),
        ("张三", "张*"),
        ("欧阳娜娜", "欧**娜"),
        ("司马相如", "司**如"),
        ("张", "张"),
        ("", ""),
        (None, None),
        ("A", "A"),
        ("Al", "A*"),
        ("Ana", "A**"),  # Latin names keep only their first letter, whatever their length
        ("Rivera^Ana", "R*****^A**"),
        ("Ana Rivera", "A** R*****"),
        ("O'Brien^Mary^J", "O******^M***^J"),
        ("李^小龙", "李^小*"),
        ("李^小龙^", "李^小*^"),
        ("王^小明", "王^小*"),
        ("诸葛^孔明亮", "诸*^孔*亮"),
        ("Mary Ann^Smith Jones", "M*** A**^S**** J****"),
        ("Ana  Rivera", "A**  R*****"),  # two spaces: both kept, the empty word between them too
        (" Ana", " A**"),
        ("Rivera^", "R*****^"),
        ("^^^^", "^^^^"),
        ("Yamada^Tarou=山田^太郎", "Y*****^T*******^太*"),  # 'Tarou=山田' is not all CJK
        ("张三Li", "张***"),  # a mixed word is not CJK: only its first character is kept
        ("𠀀𠀁𠀂", "𠀀*𠀂"),  # CJK extension B ideographs (outside the BMP) count as CJK
        ("Łukasz", "Ł*****"),
    ],
)
def test_mask_name_table(name: str | None, masked: str | None) -> None:
    assert mask_name(name) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("P00012345", "*****2345"),
        ("1234", "****"),
        ("123", "***"),
        ("1", "*"),
        ("12345", "*2345"),
        ("", ""),
        (None, None),
        ("110101199003074258", "**************4258"),  # an 18-digit resident id keeps its last 4
    ],
)
def test_mask_id_table(value: str | None, masked: str | None) -> None:
    assert mask_id(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("19650412", "1965"),
        ("1965-04-12", "1965"),
        ("1965", "1965"),
        (" 19650412", "1965"),
        ("garbage", "*******"),
        ("65-04-12", "********"),
        ("12/04/1965", "**********"),
        ("196", "***"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_birth_date_table(value: str | None, masked: str | None) -> None:
    assert mask_birth_date(value) == masked


def _is_cjk_char(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\U00020000" <= ch <= "\U0003134f"


# names from Latin letters, CJK ideographs, separators and a few other characters
_name_chars = st.one_of(
    st.sampled_from("^ ^ "),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(min_codepoint=ord("A"), max_codepoint=ord("z")),
    st.sampled_from("'-.·=*"),
    st.characters(codec="utf-8", exclude_characters="^ "),
)
names = st.text(alphabet=_name_chars, min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(names)
def test_masked_name_keeps_length_and_structure(name: str) -> None:
    masked = mask_name(name)
    assert masked is not None
    assert len(masked) == len(name)
    # the separators stay where they were, so the ^ components and the words line up
    assert [i for i, ch in enumerate(masked) if ch in "^ "] == [i for i, ch in enumerate(name) if ch in "^ "]
    assert masked.count("^") == name.count("^")
    assert [len(c) for c in masked.split("^")] == [len(c) for c in name.split("^")]


@settings(max_examples=300, deadline=None)
@given(names)
def test_masked_name_reveals_only_first_and_cjk_last_characters(name: str) -> None:
    masked = mask_name(name)
    assert masked is not None
    for component, masked_component in zip(name.split("^"), masked.split("^"), strict=True):
        for word, masked_word in zip(component.split(" "), masked_component.split(" "), strict=True):
            assert len(masked_word) == len(word)
            if len(word) <= 1:
                assert masked_word == word
                continue
            assert masked_word[0] == word[0]
            keeps_last = len(word) >= 3 and all(_is_cjk_char(ch) for ch in word)
            middle_end = len(word) - 1 if keeps_last else len(word)
            assert masked_word[1:middle_end] == MASK * (middle_end - 1)
            if keeps_last:
                assert masked_word[-1] == word[-1]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=ord("a"), max_codepoint=ord("z")), min_size=2, max_size=30))
def test_a_latin_word_never_shows_more_than_its_first_letter(word: str) -> None:
    masked = mask_name(word)
    assert masked == word[0] + MASK * (len(word) - 1)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_mask_id_keeps_exactly_the_last_four(value: str) -> None:
    masked = mask_id(value)
    assert masked is not None
    assert len(masked) == len(value)
    if len(value) <= 4:
        assert masked == MASK * len(value)
    else:
        assert masked[-4:] == value[-4:]
        assert masked[:-4] == MASK * (len(value) - 4)


@settings(max_examples=200, deadline=None)
@given(st.dates().map(lambda d: d.strftime("%Y%m%d")) | st.dates().map(lambda d: d.isoformat()))
def test_mask_birth_date_keeps_only_the_year(value: str) -> None:
    masked = mask_birth_date(value)
    assert masked == value[:4]
    assert len(masked) == 4


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Nd",)), min_size=1, max_size=20))
def test_mask_birth_date_without_a_year_is_all_stars(value: str) -> None:
    assert mask_birth_date(value) == MASK * len(value)
