"""Lookalike text: a skeleton under which visually confusable strings compare equal.

Follows the skeleton of Unicode TS #39 (section 4): decompose (NFD), replace each character
by a representative of its confusable class, decompose again. The classes come from Unicode's
confusables data as shipped by `confusable-homoglyphs` (maintained, MIT); that package maps
each character to its homoglyphs rather than to the one prototype TS #39 names, so the
representative here is the smallest code point of the class: for an address typed in Latin
it is the Latin letter itself. Known gap: the data's multi-character prototypes ("rn" for
"m") are not applied, so those pairs are not caught (docs/SECURITY.md).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from confusable_homoglyphs.confusables import confusables_data


@lru_cache(maxsize=4096)
def _representative(character: str) -> str:
    homoglyphs: list[str] = [entry["c"] for entry in confusables_data.get(character, [])]
    # A class is a prototype and every character confusable with it; reaching the prototype
    # through each homoglyph gives the same whole class from any member.
    members: set[str] = {character, *homoglyphs}
    for homoglyph in homoglyphs:
        members.update(entry["c"] for entry in confusables_data.get(homoglyph, []))
    return min((member for member in members if len(member) == 1), key=ord)


def skeleton(text: str) -> str:
    """The case-folded skeleton of `text`: equal skeletons mean the two look alike."""
    decomposed = unicodedata.normalize("NFD", text.casefold())
    mapped = "".join(_representative(character) for character in decomposed)
    return unicodedata.normalize("NFD", mapped).casefold()
