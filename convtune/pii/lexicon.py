"""Name, word and place lists for PERSON detection, built from Faker's locale data (MIT licence).

Faker ships, per locale (86 of them), the given names and surnames its fake people are
drawn from; together that is ~20,000 given names and ~20,000 surnames in Latin script,
with their diacritics (``Krisztián``, ``Šárka``, ``Lefèvre``), plus real place names and
a list of common English words. Importing every Faker locale takes seconds, so the lists
are extracted once into ``lexicon.txt.gz`` next to this file (``python -m
convtune.pii.lexicon`` rebuilds it where Faker is installed: ``pip install -e ".[dev]"``),
read lazily on first use (~0.1 s) and kept as lowercase ``frozenset`` s (memory measured
in the README, "PII results").

Three sets come out:

* :func:`given_names` and :func:`surnames`: the lexicons, each without the words that are
  common English words or places (those go to :func:`ambiguous`);
* :func:`ambiguous`: names that are also everyday words or places ("Will", "Grace", "May",
  "Paris", "Florence"): they count as names only with other evidence (a trigger phrase,
  a title, a capitalised neighbour that is a name).

``convtune/pii/first_names.txt`` (the hand-made US list) is merged in by ``names``.
"""

from __future__ import annotations

import gzip
import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

_SCRIPT_OK = frozenset("-'’ ")


def _latin(word: str) -> bool:
    """Latin letters (with diacritics), hyphens and apostrophes only: the scripts the
    redactor's capitalisation rules can read."""
    return bool(word) and all(
        (ch.isalpha() and (ord(ch) < 0x250 or 0x1E00 <= ord(ch) < 0x1F00)) or ch in _SCRIPT_OK for ch in word)


def _values(v: object) -> list[str]:
    if isinstance(v, dict):
        return [str(k) for k in v]
    if isinstance(v, (list, tuple, set, frozenset)):
        return [str(x) for x in v]
    return []


def _provider_attrs(package: str, attrs: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception:  # a locale that fails to import is skipped, not fatal  # noqa: BLE001
            continue
        provider = getattr(module, "Provider", None)
        if provider is None:
            continue
        for attr in attrs:
            out.update(_values(provider.__dict__.get(attr)))
    return out


def _lower_words(names: set[str]) -> set[str]:
    """Single lowercase words: "Mary Ann" gives "mary" and "ann"."""
    out = set()
    for name in names:
        for part in name.replace("’", "'").split():
            part = part.strip(".")
            if len(part) >= 2 and _latin(part):
                out.add(part.lower())
    return out


LEXICON = Path(__file__).with_name("lexicon.txt.gz")
SECTIONS = ("given", "surname", "ambiguous", "common", "place")


def build() -> dict[str, set[str]]:
    """The four lists from the installed Faker (the build step; needs ``faker``)."""
    given = _lower_words(_provider_attrs("faker.providers.person", (
        "first_names", "first_names_male", "first_names_female", "first_names_nonbinary")))
    family = _lower_words(_provider_attrs("faker.providers.person", (
        "last_names", "last_names_male", "last_names_female", "last_names_nonbinary")))
    from faker.providers.lorem.en_US import Provider as Lorem

    words = {w.lower() for w in Lorem.word_list}
    places = _provider_attrs("faker.providers.address", ("cities", "city_names", "countries", "states"))
    place_words = {p.lower() for p in places if " " not in p and _latin(p)}
    common = words | place_words
    return {"given": given - common, "surname": family - common, "ambiguous": (given | family) & common,
            "common": words, "place": place_words}


def write(lists: dict[str, set[str]], path: Path = LEXICON) -> None:
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        lines.extend(sorted(lists[section]))
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(lines) + "\n")


@lru_cache(maxsize=1)
def _lists() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {s: set() for s in SECTIONS}
    target = out["given"]
    with gzip.open(LEXICON, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("[") and line.endswith("]"):
                target = out[line[1:-1]]
            elif line:
                target.add(line)
    return {k: frozenset(v) for k, v in out.items()}


def given_names() -> frozenset[str]:
    return _lists()["given"]


def surnames() -> frozenset[str]:
    return _lists()["surname"]


def ambiguous() -> frozenset[str]:
    return _lists()["ambiguous"]


def common_words() -> frozenset[str]:
    """Common English words (not names on their own)."""
    return _lists()["common"]


def places() -> frozenset[str]:
    """Single-word place names: cities, states, countries (lowercase)."""
    return _lists()["place"]


if __name__ == "__main__":  # pragma: no cover
    lists = build()
    write(lists)
    print(f"wrote {LEXICON}: " + ", ".join(f"{k} {len(v)}" for k, v in lists.items()))
