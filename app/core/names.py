"""One name policy for every name a person reads: subjects, key names, collections, cameras.

A name is refused when it could print as something it is not:

* control characters (Cc), line and paragraph separators (Zl, Zp);
* format characters (Cf): zero-width spaces and joiners (U+200B-U+200D), the
  byte-order mark (U+FEFF), word joiner (U+2060), soft hyphen (U+00AD), the
  Mongolian vowel separator (U+180E) and every bidirectional control (U+202A-U+202E,
  U+2066-U+2069, U+200E/U+200F, U+061C), which can make ``Bob`` + U+202E + ``ecilA``
  display as "BobAlice";
* other invisible (default-ignorable) characters that are not Cf: Hangul fillers,
  the combining grapheme joiner and variation selectors;
* surrogates, private-use and unassigned code points (Cs, Co, Cn), whose display
  nobody can predict.

An accepted name is stripped of surrounding white space and NFC-normalised, so the
composed and decomposed spellings of "Zoë" are one name.

``name_key`` is the skeleton two names are compared by: NFKC, case-folded, white
space collapsed. Two different names with one key ("Ada" and "ADA", "Ａｄａ" in
full-width letters) display alike; a collection refuses the second one. The
galleries enforce that themselves: they store each subject's key under a unique
constraint per collection (docs/gallery.md), so changing ``name_key`` needs a
gallery migration that recomputes the stored keys.
Cross-script look-alikes (Latin "a" and Cyrillic "а") are not folded (no
confusables table ships with the service).
"""

from __future__ import annotations

import re
import unicodedata

from app.errors import InvalidRequest, NameConflict

# General categories that never belong in a displayed name (see the module docstring).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Default-ignorable code points (Unicode DerivedCoreProperties) outside Cf: they
# render as nothing. Inclusive ranges.
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors (and U+180E)
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_WHITESPACE_RUN = re.compile(r"\s+")


def is_invisible(char: str) -> bool:
    """True for characters that must not appear in a name (see the module docstring)."""
    if unicodedata.category(char) in _REFUSED_CATEGORIES:
        return True
    point = ord(char)
    return any(low <= point <= high for low, high in _INVISIBLE_RANGES)


def clean_name(value: str, *, field: str, max_length: int) -> str:
    """``value`` stripped and NFC-normalised, or ``InvalidRequest`` saying what is wrong."""
    name = unicodedata.normalize("NFC", value.strip())
    if not name or len(name) > max_length:
        raise InvalidRequest(f"{field} must be 1 to {max_length} characters", field=field)
    refused = sorted({f"U+{ord(char):04X}" for char in name if is_invisible(char)})
    if refused:
        raise InvalidRequest(
            f"{field} must not contain control, format, bidirectional or invisible "
            f"characters (found {', '.join(refused[:8])})",
            field=field,
            characters=refused[:8],
        )
    return name


def name_key(name: str) -> str:
    """The skeleton names are compared by: two names with one key look alike."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    visible = "".join(char for char in folded if not is_invisible(char))
    return _WHITESPACE_RUN.sub(" ", visible).strip()


def name_conflict(collection: str, subject: str, existing: str) -> NameConflict:
    """The refusal of ``subject``: ``existing`` is a different subject with its key."""
    return NameConflict(
        f"collection {collection!r} already has subject {existing!r}, which looks "
        f"the same as {subject!r}; enroll under {existing!r} or choose another name",
        collection=collection,
        existing=existing,
    )
