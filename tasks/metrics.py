"""Metrics shared by the tasks: accuracy, macro-F1, fuzzy list matching, ROUGE, and for answers
in words faithfulness to the transcript, repetition rate and loops (:func:`text_quality`).

Conventions (the same in every task):

* ``n`` is the number of examples and ``parse_failure_rate`` the share whose
  generation did not parse. A failed parse is a wrong answer: for
  classification it matches no label; for list tasks it is an empty
  prediction in the pooled counts and scores 0 in ``example_f1``.
* List F1 is micro-averaged: true positives, predicted and gold items are
  pooled over the whole set. With nothing predicted and nothing in gold the
  score is perfect (1.0); with one side empty it is 0.
* Fuzzy text matching uses :func:`token_set_similarity` (Dice coefficient of
  content-word sets, i.e. the F1 of token overlap) and a greedy one-to-one
  matching that takes the most similar pairs first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from tasks.base import Parsed

STOPWORDS = frozenset(
    "a an the and or of to for in on at by with from as is are was were be been will would shall "
    "should can could do does did that this these those it its their his her our your my".split()
)
_WORD = re.compile(r"[^\W_]+")


def stem_plural(word: str) -> str:
    """Harman's S-stemmer: plural endings only (charges -> charge, policies -> policy)."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@lru_cache(maxsize=4096)
def content_tokens(text: str) -> frozenset[str]:
    """Lower-cased, plural-stemmed word set without stopwords (all words if only stopwords)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    content = frozenset(stem_plural(w) for w in words if w not in STOPWORDS)
    return content or frozenset(stem_plural(w) for w in words)


def token_set_similarity(a: str, b: str) -> float:
    """Dice coefficient ``2|A&B| / (|A|+|B|)`` of the content-word sets of two strings."""
    ta, tb = content_tokens(a), content_tokens(b)
    if not ta and not tb:
        return 1.0 if a.strip().lower() == b.strip().lower() else 0.0
    return 2 * len(ta & tb) / (len(ta) + len(tb))


def normalize_label(text: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive form: "Billing Dispute" -> "billing_dispute"."""
    return re.sub(r"[\s_-]+", "_", text.strip().lower())


def match_items(
    golds: Sequence[Any],
    preds: Sequence[Any],
    similarity: Callable[[Any, Any], float],
    threshold: float,
) -> list[tuple[int, int]]:
    """One-to-one ``(gold index, prediction index)`` pairs with similarity >= threshold.

    Greedy: pairs are taken in order of decreasing similarity (ties by index).
    """
    candidates = []
    for i, g in enumerate(golds):
        for j, p in enumerate(preds):
            s = similarity(g, p)
            if s >= threshold:
                candidates.append((-s, i, j))
    candidates.sort()
    used_g: set[int] = set()
    used_p: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            pairs.append((i, j))
    return sorted(pairs)


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1; both sides empty is perfect, one side empty scores 0."""
    if n_pred == 0 and n_gold == 0:
        return 1.0, 1.0, 1.0
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def failure_rate(predictions: Sequence[Parsed]) -> float:
    return sum(not p.ok for p in predictions) / len(predictions) if predictions else 0.0


def accuracy(golds: Sequence[Any], preds: Sequence[Any]) -> float:
    """Share of equal pairs (a failed prediction, ``None``, is never equal)."""
    return sum(p is not None and p == g for g, p in zip(golds, preds)) / len(golds) if golds else 0.0


def macro_f1(golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str] | None = None) -> float:
    """Mean per-class F1 over the classes present in gold or predictions.

    ``labels`` restricts the classes averaged over (labels of the set that
    occur in neither gold nor predictions are left out, as scikit-learn does).
    A ``None`` prediction (failed parse) is a miss for its gold class and a
    false positive for no class.
    """
    classes = {g for g in golds} | {p for p in preds if p is not None}
    if labels is not None:
        classes &= set(labels)
    if not classes:
        return 0.0
    f1s = []
    for c in sorted(classes):
        tp = sum(g == c and p == c for g, p in zip(golds, preds))
        n_pred = sum(p == c for p in preds)
        n_gold = sum(g == c for g in golds)
        f1s.append(prf(tp, n_pred, n_gold)[2])
    return sum(f1s) / len(f1s)


def score_lists(
    predictions: Sequence[Parsed],
    golds: Sequence[Sequence[Any]],
    *,
    similarity: Callable[[Any, Any], float],
    threshold: float,
    attributes: dict[str, Callable[[Any, Any], bool]] | None = None,
) -> dict[str, float]:
    """Micro P/R/F1, mean per-example F1, and per-attribute accuracy on matched pairs.

    ``attributes`` maps a name to ``same(gold_item, pred_item)``; the result has
    ``<name>_accuracy`` = correct / matched pairs (1.0 when nothing was to be
    matched on either side, 0.0 when items existed but none matched).
    """
    attributes = attributes or {}
    tp = n_pred = n_gold = 0
    per_example = []
    correct = dict.fromkeys(attributes, 0)
    for parsed, gold in zip(predictions, golds):
        pred = list(parsed.value) if parsed.ok else []
        pairs = match_items(gold, pred, similarity, threshold)
        tp += len(pairs)
        n_pred += len(pred)
        n_gold += len(gold)
        per_example.append(prf(len(pairs), len(pred), len(gold))[2] if parsed.ok else 0.0)
        for name, same in attributes.items():
            correct[name] += sum(same(gold[i], pred[j]) for i, j in pairs)
    n = len(golds)
    p, r, f = prf(tp, n_pred, n_gold) if n else (0.0, 0.0, 0.0)
    out = {
        "n": float(n),
        "parse_failure_rate": failure_rate(predictions),
        "precision": p,
        "recall": r,
        "f1": f,
        "example_f1": sum(per_example) / n if n else 0.0,
    }
    vacuous = float(n > 0 and n_pred == 0 and n_gold == 0)
    for name in attributes:
        out[f"{name}_accuracy"] = correct[name] / tp if tp else vacuous
    return out


def rouge(predictions: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemming); ``None`` scores 0."""
    from rouge_score import rouge_scorer  # imported on use: it loads nltk

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, gold in zip(predictions, golds):
        if pred is None:
            continue
        for key, s in scorer.score(gold, pred).items():
            sums[key] += s.fmeasure
    n = len(golds)
    return {k: v / n if n else 0.0 for k, v in sums.items()}


# ---- faithfulness and repetition of generated text -------------------------------------
#
# ``faithfulness(answer, source)``: the share of the answer's *checkable* words that occur
# in the source transcript. A word (a run of letters/digits, joined across inner
# ``. , ' / : -`` as in "45.00", "ORD-1234", "3pm"; a trailing "'s" dropped) is checkable when it
#
# * is a placeholder such as ``<PERSON>`` (present only if the source has the same one),
# * contains a digit (amounts, dates, ids), or
# * is capitalised but not sentence-initial (a name: "Unlimited Plus", "Boston"), except
#   "I" and role words such as "Customer"/"Agent", or
# * is rare: at least 3 letters and not in :data:`COMMON_WORDS` (function words, everyday
#   words and the vocabulary every summary uses about a call: customer, agent, asked,
#   confirmed, issue ...).
#
# Matching is case-insensitive with light stemming (plurals and -ed/-ing/-ly, so "charged"
# matches "charges"); numbers drop thousands separators and trailing decimal zeros
# ("1,200.00" matches "1200") and number words count as digits ("thirty-day" matches "30-day",
# "twenty-nine" and "first" match "29" and "1"); a compound word also matches when each of its parts occurs
# ("ORD-1234" against "ord 1234", "3pm" against "3 pm").

#: Words too common to tell whether an answer sticks to its source (lower case).
COMMON_WORDS = frozenset("""
a an the and or but nor so yet if then than that this these those there here where when while
whether which who whom whose what why how not no yes also just only still already even ever never
always often sometimes usually really very too quite rather almost soon now later today tomorrow
yesterday again back away more most less least much many few some any all both each every other
another such same own enough else instead however therefore though although because since maybe
perhaps please thank thanks okay ok sure well like able unable
i me my mine myself you your yours yourself he him his himself she her hers herself it its itself
we us our ours ourselves they them their theirs themselves one ones someone somebody something
anything nothing everything anyone everyone nobody
am is are was were be been being have has had having do does did doing done will would shall
should can could may might must need ought don't can't won't isn't aren't didn't doesn't wasn't
weren't couldn't wouldn't shouldn't i'm i'll i've i'd it's that's there's you're we're they're
we'll you'll they'll we've you've they've let's
of to for in on at by with from as into onto about above below after before during through
between among against without within along across around over under up down out off further
once until upon via per toward towards next near
get make go come take give see know think say tell ask want try help call let put set keep find
look use work feel seem leave turn start stop show provide explain confirm request report mention
agree offer inform advise check resolve assist receive send contact discuss note state describe
express acknowledge apologize apologise respond reply answer clarify suggest recommend promise
inquire understand happen wait hold speak talk follow share update review verify process handle
got gone went came took taken gave given saw seen knew known thought said told made sent found
left kept put
customer customers agent agents caller representative rep support team company business
conversation call chat issue problem question concern help assistance information info detail
account service time day week month year way thing part end case matter situation reason option
step steps next person people name side
good great bad new old first last other different happy sorry right wrong available possible
little big small long short high low full whole
""".split())
_ROLE_WORDS = frozenset({"i", "customer", "agent", "caller", "representative", "rep", "user", "assistant"})
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
_CHECK_TOKEN = re.compile(r"<[A-Z][A-Z0-9_]*>|[^\W_]+(?:[.,'/:-][^\W_]+)*")
_PARTS = re.compile(r"\d+|[^\W\d_]+")
_SENTENCE_BREAK = re.compile(r"[.!?:;\n]")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"\d+\.\d+")


def _root(word: str) -> str:
    """Crude stem for matching: plural, -ied/-ed/-ing/-ly and a final "e" removed."""
    w = stem_plural(word)
    if not w.isalpha():
        return w
    if w.endswith("ied") and len(w) > 4:
        return w[:-3] + "y"
    for suffix in ("ing", "ed", "ly"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            if len(w) >= 4 and w[-1] == w[-2] and w[-1] not in "aeiouls":
                w = w[:-1]  # stopped -> stop
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


_COMMON_ROOTS = frozenset(map(_root, COMMON_WORDS))


_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_ORDINALS = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
             "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth").split()
_TENS = {w: 10 * i for i, w in enumerate("- - twenty thirty forty fifty sixty seventy eighty ninety".split())
         if w != "-"}
_NUMBER_WORDS = {**{w: i for i, w in enumerate(_UNITS)}, **{w: i for i, w in enumerate(_ORDINALS)},
                 **_TENS, **{w[:-1] + "ieth": n for w, n in _TENS.items()}, "hundred": 100, "thousand": 1000}


def _key(token: str) -> str:
    """Matching form of a lower-cased token (number normalised, number words as digits, else stemmed)."""
    if token in _NUMBER_WORDS:
        return str(_NUMBER_WORDS[token])
    if any(c.isdigit() for c in token):
        if _THOUSANDS.fullmatch(token):
            token = token.replace(",", "")
        if _DECIMAL.fullmatch(token):
            token = token.rstrip("0").rstrip(".")
        return token
    return _root(token)


def _tokens(text: str) -> list[tuple[str, bool]]:
    """``(token, sentence_initial)`` pairs of a text, apostrophes unified, "'s" dropped."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
    out, prev_end = [], 0
    for m in _CHECK_TOKEN.finditer(text):
        initial = not out or bool(_SENTENCE_BREAK.search(text, prev_end, m.start()))
        tok = m.group()
        if tok.lower().endswith("'s"):
            tok = tok[:-2]
        out.append((tok, initial))
        prev_end = m.end()
    return out


def checkable_words(answer: str) -> list[str]:
    """The answer's words that :func:`faithfulness` checks against the source (see above)."""
    out = []
    for tok, initial in _tokens(answer):
        low = tok.lower()
        if _PLACEHOLDER.fullmatch(tok) or any(c.isdigit() for c in tok):
            out.append(tok)
        elif low in _ROLE_WORDS:
            continue
        elif tok[:1].isupper() and not initial:
            out.append(tok)
        elif len(low) >= 3 and low not in COMMON_WORDS and _root(low) not in _COMMON_ROOTS:
            out.append(tok)
    return out


@lru_cache(maxsize=256)
def _source_keys(source: str) -> frozenset[str]:
    keys, prev = set(), ""
    for tok, _ in _tokens(source):
        low = tok.lower()
        keys.add(low if _PLACEHOLDER.fullmatch(tok) else _key(low))
        for part in _PARTS.findall(low):
            keys.add(_key(part))
            if prev in _TENS and 0 < _NUMBER_WORDS.get(part, 0) < 10:  # "twenty-nine", "thirty one"
                keys.add(str(_TENS[prev] + _NUMBER_WORDS[part]))
            prev = part
    return frozenset(keys)


def _present(token: str, keys: frozenset[str]) -> bool:
    low = token.lower()
    if _PLACEHOLDER.fullmatch(token):
        return low in keys
    if _key(low) in keys:
        return True
    parts = _PARTS.findall(low)
    return len(parts) > 1 and all(_key(p) in keys for p in parts)


def faithfulness(answer: str, source: str) -> float | None:
    """Share of the answer's checkable words (:func:`checkable_words`) found in ``source``.

    ``None`` when the answer has no checkable word (nothing it says can be checked).
    """
    words = checkable_words(answer)
    if not words:
        return None
    keys = _source_keys(source)
    return sum(_present(w, keys) for w in words) / len(words)


def unsupported_words(answer: str, source: str) -> list[str]:
    """The checkable words of ``answer`` not found in ``source`` (for inspecting a low score)."""
    keys = _source_keys(source)
    return [w for w in checkable_words(answer) if not _present(w, keys)]


def _words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that repeat an earlier n-gram of the same text.

    Lower-cased words (punctuation ignored); 0.0 without repetition or with fewer than
    ``n`` words; approaches 1.0 for a text stuck repeating one phrase.
    """
    words = _words(text)
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(total)]
    return (total - len(set(grams))) / total


#: A loop: a span of ``p`` words repeated back to back, 3+ copies and at least this many words.
LOOP_MIN_WORDS = 12
#: ... or, on texts of at least ``LOOP_LONG_WORDS`` words, a trigram repetition rate this high.
LOOP_RATE = 0.5
LOOP_LONG_WORDS = 30
#: Longest repeated span looked for (longer loops are caught by the repetition rate).
LOOP_MAX_SPAN = 50


def has_loop(text: str) -> bool:
    """True when the text has fallen into a repetition loop.

    Either some span of ``p`` words occurs 3+ times back to back covering at least
    :data:`LOOP_MIN_WORDS` words (``p >= 4``: 3 copies; shorter spans need more copies:
    12 times the same word, 6 times the same pair ...), or the text has at least
    :data:`LOOP_LONG_WORDS` words and :func:`repetition_rate` (trigrams) >= :data:`LOOP_RATE`.
    """
    words = _words(text)
    n = len(words)
    for p in range(1, min(n // 3, LOOP_MAX_SPAN) + 1):
        need = max(2 * p, LOOP_MIN_WORDS - p)  # consecutive positions with words[j] == words[j + p]
        run = 0
        for j in range(n - p):
            run = run + 1 if words[j] == words[j + p] else 0
            if run >= need:
                return True
    return n >= LOOP_LONG_WORDS and repetition_rate(text, 3) >= LOOP_RATE


_JSON_KEY = re.compile(r'"[A-Za-z_][\w ]*"\s*:')


def strip_json_keys(text: str) -> str:
    """The text without JSON object keys (``"text":``), so a list's structure is no repetition."""
    return _JSON_KEY.sub(" ", text)


def text_quality(answers: Sequence[str | None], sources: Sequence[str],
                 outputs: Sequence[str] | None = None) -> dict[str, float]:
    """``faithfulness``, ``repetition_rate`` and ``loops`` of a set of generated answers.

    ``answers``: the parsed answer texts (``None``: a failed parse, left out of
    faithfulness); ``sources``: each answer's transcript; ``outputs``: the raw
    generations measured for repetition (default: the answers). ``faithfulness`` is
    the mean over answers that have checkable words, and 1.0 when none has any (nothing
    unsupported was said; parse failures are counted by ``parse_failure_rate``);
    ``repetition_rate`` is the mean over outputs; ``loops`` counts outputs with :func:`has_loop`.
    """
    if len(answers) != len(sources):
        raise ValueError(f"{len(answers)} answers but {len(sources)} sources")
    texts = list(outputs) if outputs is not None else [a or "" for a in answers]
    scores = [s for a, src in zip(answers, sources) if a is not None
              for s in [faithfulness(a, src)] if s is not None]
    return {
        "faithfulness": sum(scores) / len(scores) if scores else 1.0,
        "repetition_rate": sum(map(repetition_rate, texts)) / len(texts) if texts else 0.0,
        "loops": float(sum(map(has_loop, texts))),
    }
