"""The one name policy: what is refused, how names are normalised, and the look-alike key."""

from __future__ import annotations

import unicodedata

import pytest

from app.core.names import clean_name, name_key
from app.errors import InvalidRequest


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("\u200b", id="zero-width-space-only"),
        pytest.param("\ufeff", id="bom-only"),
        pytest.param("\u2060", id="word-joiner-only"),
        pytest.param("\u00ad", id="soft-hyphen-only"),
        pytest.param("\u180e", id="mongolian-vowel-separator-only"),
        pytest.param("Ada\u200b", id="trailing-zero-width-space"),
        pytest.param("Bob\u202eecilA", id="right-to-left-override"),
        pytest.param("\u2066Ada\u2069", id="isolates"),
        pytest.param("A\u200dda", id="zero-width-joiner"),
        pytest.param("Ada\u200e", id="left-to-right-mark"),
        pytest.param("\u3164", id="hangul-filler"),
        pytest.param("Ada\ufe0f", id="variation-selector"),
        pytest.param("A\u034fda", id="combining-grapheme-joiner"),
        pytest.param("Ada\x07", id="bell"),
        pytest.param("Ada\u0085Lovelace", id="c1-next-line"),
        pytest.param("Ada\u2028Lovelace", id="line-separator"),
        pytest.param("Ada\ue000", id="private-use"),
        pytest.param("Ada\ud800", id="lone-surrogate"),
        pytest.param("Ada\U000e0001", id="language-tag"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("x" * 65, id="too-long"),
    ],
)
def test_names_that_could_print_as_something_else_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        clean_name(name, field="subject", max_length=64)
    assert refused.value.details["field"] == "subject"


def test_an_unassigned_code_point_is_refused() -> None:
    unassigned = next(chr(c) for c in range(0x0378, 0x0400) if unicodedata.category(chr(c)) == "Cn")
    with pytest.raises(InvalidRequest):
        clean_name(f"Ada{unassigned}", field="name", max_length=64)


@pytest.mark.parametrize(
    "name",
    [
        "Ada Lovelace",
        "Zoë",
        "José María",
        "山田 太郎",
        "محمد",
        "Ngũgĩ wa Thiong'o",
        "O'Brien-Smith",
    ],
)
def test_real_names_in_any_script_are_accepted(name: str) -> None:
    assert clean_name(name, field="subject", max_length=64) == name


def test_names_are_stripped_and_nfc_normalised() -> None:
    decomposed = "  Zoe\u0308 "
    cleaned = clean_name(decomposed, field="subject", max_length=64)
    assert cleaned == "Zo\u00eb"
    assert unicodedata.is_normalized("NFC", cleaned)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Ada", "ADA"),
        ("Ada", "\uff21\uff44\uff41"),  # full-width letters
        ("Ada Lovelace", "Ada  Lovelace"),
        ("Ada Lovelace", "Ada\u00a0Lovelace"),  # no-break space
        ("Straße", "STRASSE"),
        ("ﬁona", "fiona"),  # ligature
    ],
)
def test_look_alike_names_share_one_key(first: str, second: str) -> None:
    assert first != second
    assert name_key(first) == name_key(second)


def test_different_names_have_different_keys() -> None:
    assert name_key("Ada") != name_key("Ida")
    assert name_key("Zoë") != name_key("Zoe")
