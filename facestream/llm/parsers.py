"""Free-text Face-LLaVA answers -> the structured fields of an analysis event.

Face-LLaVA answers in prose: a conclusion and its justification ("The person's expression
clearly indicates fear. Her eyes are wide open..."). These parsers read that prose with
plain rules, documented here so their results can be predicted:

* **Mentions.** Each vocabulary word (and its synonyms) is found on word boundaries.
* **Negation.** A mention is negated when one of ``not, no, never, without, neither, nor,
  n't, rather than, instead of, absence of, lack of, free of`` (or "no sign/trace/hint/
  evidence/indication of") occurs among the four words before it in the same clause;
  clauses end at ``. ; : ! ?``, commas and "but". "No doubt" and "not only" do not negate.
  A denied verb of seeing or believing earlier in the clause ("I do not suspect the video
  has been altered", "does not appear to have been manipulated") negates too.
* **Conclusion first.** When several labels remain, the one stated as the conclusion wins:
  a mention preceded in its clause by a verdict cue ("indicates", "suggests", "shows",
  "is", "appears", "looks", "classified as", "the expression is" ...) or followed by
  "expression"/"emotion"/"face"/"look" outranks a bare mention; a sentence opened by
  "overall", "in conclusion", "in summary", "therefore" or "thus" outranks both; a cue
  hedged with "might", "could", "may", "possibly", "perhaps", "slight", "hint of" or "also"
  counts as a bare mention.  Equal ranks: the earliest mention wins (answers state the label
  first and justify it after).
* A text naming no known label gives ``None`` fields; the text itself is kept by the caller.

Expression: the seven contract labels.  "Contempt" (AffectNet's eighth class) is recognised
as a label so that it can win the conclusion, but it maps to ``None``: it is not one of the
seven and folding it into disgust or anger would invent a label.

Action units: the union of the BP4D and DISFA sets.  An AU named as present gets the FACS
intensity given with it (letters A-E -> 1-5, or a number 0-5), else
:data:`PRESENT_INTENSITY`; an AU stated absent gets 0.0; an unmentioned one ``None``.

Age: see :func:`parse_age` for the mapping of phrases to (years, low, high).

Attributes: gender plus CelebA's 40 binary attributes (spelt as CelebA spells them), each
``True``/``False`` where the text states it and ``None`` where it does not; ``Male`` follows
the gender.

Deepfake: a verdict (fake or real) and a score = probability of fake: a stated percentage or
probability when there is one, else 1.0 for fake and 0.0 for real.

Pure Python (``re`` only); every function is thread-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")
ACTION_UNITS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15",
                "AU17", "AU23", "AU24", "AU25", "AU26")
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
PRESENT_INTENSITY = 3.0     # an AU named present with no intensity: FACS "C" (marked)

# ---------------------------------------------------------------------------- mentions

_NEGATORS = re.compile(r"\b(?:not|no|never|without|neither|nor|none|lacks?|lacking|absent)\b|"
                       r"n't\b|\brather than\b|\binstead of\b|\babsence of\b|\black of\b|"
                       r"\bfree of\b")
_NEGATED_VERB = re.compile(r"(?:\bnot|n't|\bnever)\s+(?:\w+\s+)?(?:think|believe|suspect|see|"
                           r"find|detect|notice|observe|appear|seem|look|show)\w*\b")
_NOT_NEGATING = re.compile(r"\bno doubt\b|\bnot only\b|\bnot just\b")
_CLAUSE_END = re.compile(r"[;:!?,()\n]|\.(?=\s|$)|\bbut\b|\bwhereas\b|\bwhile\b|\bhowever\b")
_SENTENCE_END = re.compile(r"[;!?\n]|\.(?=\s|$)")
_VERDICT_BEFORE = re.compile(
    r"\b(?:indicat\w*|suggest\w*|show\w*|display\w*|express\w*|convey\w*|reflect\w*|"
    r"depict\w*|portray\w*|reveal\w*|signal\w*|is|are|was|be|being|appears?|seems?|looks?|"
    r"feels?|classif\w*|identif\w*|categori[sz]\w*|labell?ed|conclu\w*|evident|clearly|"
    r"likely|(?:expression|emotion|feeling|sense|look|state|sign|signs) of)\b")
_VERDICT_AFTER = re.compile(r"^\s*(?:facial\s+)?(?:expression|emotion|face|look|mood|"
                            r"feeling)\b")
_HEDGES = re.compile(r"\b(?:might|could|may|possibly|perhaps|slight\w*|hint of|touch of|"
                     r"trace of|also|some|mild\w*)\b")
_SUMMARY = re.compile(r"\b(?:overall|in conclusion|in summary|to summarize|therefore|thus|"
                      r"hence|final answer)\b")


@dataclass(frozen=True)
class _Mention:
    label: str
    start: int
    end: int
    negated: bool
    rank: int          # 0 bare, 1 verdict, 2 summary verdict


def _clause_before(text: str, start: int) -> str:
    ends = [m.end() for m in _CLAUSE_END.finditer(text, 0, start)]
    return text[ends[-1] if ends else 0:start]


def _negated(text: str, start: int) -> bool:
    clause = _clause_before(text, start)
    window = " ".join(clause.split()[-4:])
    return bool(_NEGATORS.search(_NOT_NEGATING.sub(" ", window))
                or _NEGATED_VERB.search(clause))


def _rank(text: str, start: int, end: int) -> int:
    recent = " ".join(_clause_before(text, start).split()[-6:])
    verdict = _VERDICT_BEFORE.search(recent) or _VERDICT_AFTER.match(text[end:])
    if not verdict or _HEDGES.search(recent):
        return 0
    sentences = [m.end() for m in _SENTENCE_END.finditer(text, 0, start)]
    sentence = text[sentences[-1] if sentences else 0:start]
    return 2 if _SUMMARY.search(sentence) else 1


def _mentions(text: str, vocabulary: dict[str, re.Pattern]) -> list[_Mention]:
    found = []
    for label, pattern in vocabulary.items():
        for m in pattern.finditer(text):
            found.append(_Mention(label, m.start(), m.end(), _negated(text, m.start()),
                                  _rank(text, m.start(), m.end())))
    return sorted(found, key=lambda m: m.start)


def _conclusion(mentions: list[_Mention]) -> _Mention | None:
    affirmed = [m for m in mentions if not m.negated]
    if not affirmed:
        return None
    best = max(m.rank for m in affirmed)
    return next(m for m in affirmed if m.rank == best)


def _words(*alternatives: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b")


# ---------------------------------------------------------------------------- expression

_EXPRESSION_WORDS: dict[str, re.Pattern] = {
    "neutral": _words(r"neutral(?:ity)?", "calm", "calmness", "expressionless", "impassive",
                      "emotionless", "deadpan", "blank expression",
                      r"no (?:particular |clear |obvious |strong |visible |discernible |"
                      r"apparent |specific )?(?:emotions?|expressions?)(?!\s+of\b)"),
    "happy": _words("happy", "happiness", "joy", "joyful", "joyous", "cheerful", "delighted",
                    "pleased", "glad", r"smil(?:e|es|ing)", "amused", "amusement",
                    "elated", "content(?:ed|ment)"),
    "sad": _words("sad", "sadness", "sorrow", "sorrowful", "unhappy", "unhappiness",
                  "melancholy", "grief", r"griev\w+", "gloomy", "depressed", "downcast",
                  "dejected", "tearful", "crying"),
    "surprise": _words("surprise", "surprised", "astonished", "astonishment", "shock",
                       "shocked", "amazed", "amazement", "startled"),
    "fear": _words("fear", "fearful", "afraid", "scared", "fright", "frightened", "terrified",
                   "terror", "anxious", "anxiety", "panic", "panicked"),
    "disgust": _words("disgust", "disgusted", "revulsion", "repulsed", "revolted"),
    "anger": _words("anger", "angry", "angrily", "rage", "enraged", "irritated", "irritation",
                    "furious", "fury", "annoyed", "annoyance"),
    "contempt": _words("contempt", "contemptuous", "scorn", "disdain"),
}


@dataclass(frozen=True)
class ParsedExpression:
    """``label`` is one of :data:`EXPRESSIONS` or None; ``text`` is the answer as given."""

    label: str | None
    text: str


def parse_expression(text: str) -> ParsedExpression:
    """The concluded expression of an answer (module docstring: rules)."""
    chosen = _conclusion(_mentions(text.lower(), _EXPRESSION_WORDS))
    label = chosen.label if chosen is not None and chosen.label in EXPRESSIONS else None
    return ParsedExpression(label, text)


def normalize_expression(word: str) -> str | None:
    """A dataset's label word ("happiness", "Angry", "surprised") -> a contract label or None."""
    word = word.strip().lower()
    for label, pattern in _EXPRESSION_WORDS.items():
        if pattern.fullmatch(word):
            return label if label in EXPRESSIONS else None
    return None


# ---------------------------------------------------------------------------- action units

_AU_NAMES: dict[str, str] = {
    "AU1": r"inner brows? raiser?s?", "AU2": r"outer brows? raiser?s?",
    "AU4": r"brows? lowerer?s?|brow lowering", "AU6": r"cheeks? raiser?s?",
    "AU7": r"(?:eye)?lids? tighten(?:er|ers|ing)", "AU9": r"nose wrinkl(?:er|ers|ing)",
    "AU10": r"upper lip raiser?s?", "AU12": r"lip corners? pull(?:er|ers|ing)",
    "AU14": r"dimpl(?:er|ers|ing)", "AU15": r"lip corners? depress(?:or|ors|ing)",
    "AU17": r"chin raiser?s?", "AU23": r"lips? tighten(?:er|ers|ing)",
    "AU24": r"lips? press(?:or|ors|ing)", "AU25": r"lips? part(?:s|ed|ing)?",
    "AU26": r"jaw drop(?:s|ped|ping)?",
}
_AU_NAME_PATTERNS = {au: re.compile(rf"\b(?:{p})\b") for au, p in _AU_NAMES.items()}
# "AU12", "AU 12", "AU12E", "AUs 6 and 12", "action unit 12", "action units 6, 12 and 25"
_AU_NUMBERS = re.compile(r"\b(?:action\s+units?|aus?)\s*#?\s*(\d{1,2})([a-e])?\b"
                         r"((?:\s*(?:,|and|&|\+|/|or)\s*(?:au\s*)?\d{1,2}[a-e]?\b)*)")
_AU_LIST_ITEM = re.compile(r"(?:au\s*)?(\d{1,2})([a-e])?\b")
_INTENSITY_AFTER = re.compile(r"^\s*[(:,-]?\s*(?:with\s+)?(?:an?\s+)?(?:intensity|level)\s*"
                              r"(?:of|=|:|is)?\s*([a-e]|[0-5](?:\.\d+)?)\b|^\s*\(([a-e])\)")
_ABSENT_AFTER = re.compile(r"^\s*(?:\([^)]*\)\s*)?(?:is|are|was|were|seems?|appears?|"
                           r"remains?)?\s*(?:absent|inactive|not (?:present|active|activated|"
                           r"visible|engaged|observed|detected|shown|seen))\b")
_TAIL_END = re.compile(r"[;!?\n]|\.(?=\s|$)|,\s|\bbut\b|\bwhile\b|\bwhereas\b")
_GROUP_GAP = re.compile(r"^[\s,;&+/()\-:]*(?:(?:and|or|nor|as well as|plus)\b)?[\s,;&+/()\-:]*$")
_FACS_LETTER = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}


def _intensity(letter: str | None, text_after: str) -> float | None:
    if letter:
        return _FACS_LETTER[letter]
    m = _INTENSITY_AFTER.match(text_after)
    if not m:
        return None
    value = m.group(1) or m.group(2)
    return _FACS_LETTER[value] if value in _FACS_LETTER else float(value)


def parse_action_units(text: str) -> dict[str, float | None]:
    """AU -> intensity 0..5 (0.0 stated absent) or None (not mentioned), for ACTION_UNITS.

    When one AU is both affirmed and denied, the affirmed statement wins.
    """
    low = text.lower()
    hits: list[tuple[int, int, str, float | None]] = []        # start, end, AU, intensity
    for m in _AU_NUMBERS.finditer(low):
        items = [(m.start(1), m.end(2) if m.group(2) else m.end(1), m.group(1), m.group(2))]
        if m.group(3):
            base = m.start(3)
            items += [(base + i.start(), base + i.end(), i.group(1), i.group(2))
                      for i in _AU_LIST_ITEM.finditer(m.group(3))]
        # every numbered AU is a hit, so an unscored one (AU5) still joins its list
        hits += [(m.start() if k == 0 else start, end, f"AU{int(number)}",
                  _intensity(letter, low[end:]))
                 for k, (start, end, number, letter) in enumerate(items)]
    for au, pattern in _AU_NAME_PATTERNS.items():
        hits += [(m.start(), m.end(), au, _intensity(None, low[m.end():]))
                 for m in pattern.finditer(low)]
    hits.sort()
    groups: list[list[tuple[int, int, str, float | None]]] = []   # "AU1, AU2 and AU4 ..."
    for hit in hits:
        if groups and _GROUP_GAP.match(low[groups[-1][-1][1]:hit[0]]):
            groups[-1].append(hit)
        else:
            groups.append([hit])
    result: dict[str, float | None] = dict.fromkeys(ACTION_UNITS)
    for g, group in enumerate(groups):
        tail = low[group[-1][1]:groups[g + 1][0][0] if g + 1 < len(groups) else len(low)]
        cut = _TAIL_END.search(tail)
        denied = (_negated(low, group[0][0])
                  or _ABSENT_AFTER.match(tail[:cut.start()] if cut else tail) is not None)
        for start, _, au, intensity in group:
            if au not in result:
                continue
            if denied or _negated(low, start):
                if result[au] is None:
                    result[au] = 0.0
            else:
                value = PRESENT_INTENSITY if intensity is None else intensity
                result[au] = max(result[au] or 0.0, value)
    return result


# ---------------------------------------------------------------------------- age

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_TENS) + r")(?:[\s-](" +
                          "|".join(list(_UNITS)[1:10]) + r"))?\b|\b(" +
                          "|".join(_UNITS) + r")\b")
_DECADE_WORDS = {"teens": 10, "twenties": 20, "thirties": 30, "forties": 40, "fifties": 50,
                 "sixties": 60, "seventies": 70, "eighties": 80, "nineties": 90}
_DECADE = re.compile(r"\b(?:(early|mid|late)[\s-]*)?(?:(" + "|".join(_DECADE_WORDS) +
                     r")|(\d0)\s*'?s)\b")
_DECADE_SPAN = re.compile(r"\s*(?:to|or|-|–|and)\s*(?:the\s+)?(?:his\s+|her\s+|their\s+)?")
_YEARS = r"\s*(?:years?|yrs?)(?:[\s-]*old|\s+of\s+age)?|[\s-]*years?[\s-]*old"
_RANGE = re.compile(r"\b(\d{1,3})\s*(?:-|–|to|and)\s*(\d{1,3})(" + _YEARS + r")?")
_RANGE_LEAD = re.compile(r"\b(?:between|from|range of|aged?|ages|roughly|around|about|"
                         r"approximately|estimated?|likely|is|be|of)\s*$")
_POINT = re.compile(r"\b(\d{1,3})(?:" + _YEARS + r")\b")
_POINT_LEAD = re.compile(r"(?:\bage\b(?:\s+(?:of|is|at|around|about|approximately|would be|"
                         r"to be|is estimated to be|appears to be|estimate is))?|\baged|"
                         r"\baround|\babout|\bapproximately|\broughly|"
                         r"\bestimated?(?:\s+(?:at|to be))?|\blikely)\s*:?\s*(\d{1,3})\b")
# category word -> (years, low, high); checked after numbers and decades.
_AGE_CLASSES: list[tuple[re.Pattern, tuple[float, float, float]]] = [
    (_words("infant", "baby", "newborn"), (1.0, 0.0, 2.0)),
    (_words("toddler"), (2.0, 1.0, 3.0)),
    (_words("child", "kid", "little (?:girl|boy)"), (8.0, 4.0, 12.0)),
    (_words(r"teen(?:ager)?s?", "teenaged?", "adolescents?"), (16.0, 13.0, 19.0)),
    (_words("young adult"), (24.0, 18.0, 30.0)),
    (_words(r"middle[\s-]aged?"), (50.0, 40.0, 60.0)),
    (_words("elderly", "senior", "old age"), (72.0, 65.0, 85.0)),
]


@dataclass(frozen=True)
class AgeAnswer:
    """Age in years and an interval around it; all None when the text gives no age."""

    years: float | None
    low: float | None
    high: float | None


def _decade(m: re.Match) -> tuple[float, float, float]:
    """(years, low, high) of "twenties", "early 30s", "late teens"..."""
    base = _DECADE_WORDS[m.group(2)] if m.group(2) else int(m.group(3))
    if base == 10:                                   # "teens": 13-19
        table = {"early": (14, 13, 15), "mid": (16, 15, 17), "late": (18, 17, 19),
                 None: (16, 13, 19)}
    else:
        table = {"early": (base + 2, base, base + 3), "mid": (base + 5, base + 4, base + 6),
                 "late": (base + 8, base + 7, base + 9), None: (base + 5, base, base + 9)}
    years, low, high = table[m.group(1)]
    return float(years), float(low), float(high)


def _words_to_digits(text: str) -> str:
    def replace(m: re.Match) -> str:
        if m.group(3):
            return str(_UNITS[m.group(3)])
        return str(_TENS[m.group(1)] + (_UNITS[m.group(2)] if m.group(2) else 0))
    return _NUMBER_WORD.sub(replace, text)


def parse_age(text: str) -> AgeAnswer:
    """The stated age, checked in this order (the first kind found wins):

    1. a range "between 30 and 40", "25-30 years old" -> (midpoint, low, high);
    2. a number "35 years old", "a 35-year-old", "aged 35", "around 35", "age: 35" ->
       (35, 35, 35);
    3. decades: "twenties" -> (25, 20, 29); "early/mid/late twenties" (or "20s") ->
       (22, 20, 23) / (25, 24, 26) / (28, 27, 29); "late 20s to early 30s" spans both;
       "teens" -> 13-19;
    4. words: infant (1, 0-2), toddler (2, 1-3), child (8, 4-12), teenager (16, 13-19),
       young adult (24, 18-30), middle-aged (50, 40-60), elderly/senior (72, 65-85).
    Ages outside 0..120 are ignored.  Number words ("thirty-five") count as numbers.
    """
    low_text = _words_to_digits(text.lower())
    for m in _RANGE.finditer(low_text):
        a, b = float(m.group(1)), float(m.group(2))
        if (m.group(3) or _RANGE_LEAD.search(low_text[:m.start()])) and 0 <= a < b <= 120:
            return AgeAnswer((a + b) / 2, a, b)
    for pattern in (_POINT, _POINT_LEAD):
        for m in pattern.finditer(low_text):
            value = float(m.group(1))
            if 0 <= value <= 120:
                return AgeAnswer(value, value, value)
    decades = list(_DECADE.finditer(low_text))
    if decades:
        years, lo, hi = _decade(decades[0])
        if len(decades) > 1 and _DECADE_SPAN.fullmatch(
                low_text[decades[0].end():decades[1].start()]):
            hi = _decade(decades[1])[2]
            years = (lo + hi) / 2
        return AgeAnswer(years, lo, hi)
    for pattern, (years, lo, hi) in _AGE_CLASSES:
        m = pattern.search(low_text)
        if m and not _negated(low_text, m.start()):
            return AgeAnswer(years, lo, hi)
    return AgeAnswer(None, None, None)


# ---------------------------------------------------------------------------- attributes

_GENDER_NOUNS = {"female": _words("woman", "women", "female", "girl", "lady", "feminine"),
                 "male": _words("man", "men", "male", "boy", "gentleman", "guy", "masculine")}
_GENDER_PRONOUNS = {"female": _words("she", "her", "hers", "herself"),
                    "male": _words("he", "him", "his", "himself")}


def _hair(*colours: str) -> str:
    adjectives = "|".join(colours)
    return (rf"(?:{adjectives})(?:[\s,-]+(?:and\s+)?[a-z-]+){{0,3}}?[\s,-]+hair|"
            rf"hair (?:is|looks|appears|seems)\s+(?:\w+\s+)?(?:{adjectives})")


def _brows(*shapes: str) -> str:
    adjectives = "|".join(shapes)
    return (rf"(?:{adjectives})(?:[\s,-]+(?:and\s+)?[a-z-]+){{0,2}}?[\s,-]+(?:eye)?brows|"
            rf"(?:eye)?brows (?:are|look|appear|seem)\s+(?:\w+\s+)?(?:{adjectives})")


# attribute -> [(pattern, value when affirmed, value when negated)]; None = says nothing.
_ATTRIBUTE_RULES: dict[str, list[tuple[str, bool | None, bool | None]]] = {
    "5_o_Clock_Shadow": [(r"(?:5|five)[\s-]o'?clock shadow|stubble|stubbly", True, False)],
    "Arched_Eyebrows": [(_brows("arched", "arching"), True, False)],
    "Attractive": [(r"attractive|good[\s-]looking|beautiful|handsome", True, False),
                   (r"unattractive", False, True)],
    "Bags_Under_Eyes": [(r"bags under (?:the |his |her |their )?eyes|under[\s-]eye bags|"
                         r"eye bags|puffy eyes", True, False)],
    "Bald": [(r"bald|hairless head", True, False)],
    "Bangs": [(r"bangs|fringe", True, False)],
    "Big_Lips": [(r"(?:big|full|large|thick|plump) lips", True, False)],
    "Big_Nose": [(r"(?:big|large|prominent) nose", True, False)],
    "Black_Hair": [(_hair("black", "jet-black", "raven"), True, False)],
    "Blond_Hair": [(_hair("blond", "blonde", "golden"), True, False),
                   (r"blonde?", True, False)],
    "Blurry": [(r"blurry|blurred|out of focus", True, False),
               (r"(?:sharp|clear) (?:image|photo|picture)|in focus", False, None)],
    "Brown_Hair": [(_hair("brown", "chestnut", "auburn"), True, False),
                   (r"brunette", True, False)],
    "Bushy_Eyebrows": [(_brows("bushy", "thick", "heavy"), True, False)],
    "Chubby": [(r"chubby|plump face|round[\s-]faced", True, False)],
    "Double_Chin": [(r"double chin", True, False)],
    "Eyeglasses": [(r"eyeglasses|glasses|spectacles|sunglasses|eyewear", True, False)],
    "Goatee": [(r"goatee", True, False)],
    "Gray_Hair": [(_hair("gray", "grey", "white", "silver", "graying", "greying"), True, False)],
    "Heavy_Makeup": [(r"heavy (?:make[\s-]?up|cosmetics)|heavily made[\s-]up|"
                      r"lots of make[\s-]?up", True, False),
                     (r"make[\s-]?up", None, False)],
    "High_Cheekbones": [(r"(?:high|prominent|pronounced) cheekbones", True, False)],
    "Mouth_Slightly_Open": [(r"mouth (?:is )?slightly (?:open|ajar|parted)|slightly open(?:ed)? "
                             r"mouth|slightly parted lips|lips (?:are )?slightly parted",
                             True, False),
                            (r"(?:mouth|lips) (?:is |are )?(?:closed|shut|sealed)|closed mouth",
                             False, None)],
    "Mustache": [(r"mustache|moustache", True, False)],
    "Narrow_Eyes": [(r"narrow(?:ed)? eyes|squint\w*", True, False)],
    "No_Beard": [(r"beard|bearded", False, True),
                 (r"clean[\s-]shaven|beardless", True, False)],
    "Oval_Face": [(r"oval(?:[\s-]shaped)? face|oval[\s-]faced|face is oval", True, False)],
    "Pale_Skin": [(r"pale|fair[\s-]skinned|fair (?:skin|complexion)", True, False)],
    "Pointy_Nose": [(r"(?:pointy|pointed|sharp) nose", True, False)],
    "Receding_Hairline": [(r"receding hair[\s-]?line", True, False)],
    "Rosy_Cheeks": [(r"(?:rosy|flushed|pink|red) cheeks", True, False)],
    "Sideburns": [(r"sideburns?", True, False)],
    "Smiling": [(r"smil(?:e|es|ing)|grin(?:s|ning)?", True, False)],
    "Straight_Hair": [(_hair("straight", "sleek"), True, False)],
    "Wavy_Hair": [(_hair("wavy", "curly", "wavy-curly"), True, False)],
    "Wearing_Earrings": [(r"earrings?", True, False)],
    "Wearing_Hat": [(r"hat|cap|beanie|headwear", True, False)],
    "Wearing_Lipstick": [(r"lipstick|lip gloss|painted lips", True, False)],
    "Wearing_Necklace": [(r"necklace|pendant|chain around (?:the |his |her )?neck", True, False)],
    "Wearing_Necktie": [(r"neck[\s-]?tie|tie|bow tie|cravat", True, False)],
    "Young": [(r"young|youthful|teen(?:ager)?|adolescent", True, False),
              (r"elderly|senior|middle[\s-]aged|old(?:er)? (?:man|woman|person|lady|"
               r"gentleman|adult)", False, True)],
}
_ATTRIBUTE_PATTERNS = {name: [(re.compile(rf"\b(?:{p})\b"), yes, no) for p, yes, no in rules]
                       for name, rules in _ATTRIBUTE_RULES.items()}


def _gender(text: str) -> str | None:
    for vocabulary in (_GENDER_NOUNS, _GENDER_PRONOUNS):
        mentions = [m for m in _mentions(text, vocabulary) if not m.negated]
        counts = {label: sum(m.label == label for m in mentions) for label in vocabulary}
        if counts["female"] != counts["male"]:
            return max(counts, key=counts.get)
        if mentions and vocabulary is _GENDER_NOUNS:
            return mentions[0].label
    return None


def parse_attributes(text: str) -> dict[str, str | bool | None]:
    """``{"gender": "female"|"male"|None, <each CelebA attribute>: True|False|None}``.

    Gender: the nouns (woman, man, girl, boy, female, male...) decide by count, first
    mention on a tie; without any, the pronouns (she/her vs he/him/his) by count.  For each
    attribute the first statement in the text wins; a negated statement ("no eyeglasses",
    "not wearing a hat") gives the rule's negated value.
    """
    low = text.lower()
    gender = _gender(low)
    result: dict[str, str | bool | None] = {"gender": gender}
    for name in CELEBA_ATTRIBUTES:
        statements = []
        for pattern, yes, no in _ATTRIBUTE_PATTERNS.get(name, []):
            for m in pattern.finditer(low):
                value = no if _negated(low, m.start()) else yes
                if value is not None:
                    statements.append((m.start(), value))
        result[name] = min(statements)[1] if statements else None
    result["Male"] = None if gender is None else gender == "male"
    return result


# ---------------------------------------------------------------------------- deepfake

_DEEPFAKE_WORDS: dict[str, re.Pattern] = {
    "fake": _words(r"fake[sd]?", "deepfakes?", r"manipulat\w*", "synthetic", "synthesi[sz]ed",
                   r"forge[dr]y?", "forgery", r"tamper\w*", "altered", "alterations?",
                   "fabricated", r"(?:ai|computer)[\s-]generated", "doctored", "artificial",
                   "counterfeit", "spoof(?:ed)?", r"face[\s-]?swap\w*"),
    "real": _words("real", "authentic", "authenticity", "genuine", "unaltered", "untampered",
                   "unmanipulated", "original", "legitimate", "pristine"),
}
_PROBABILITY = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%|(?<![\d.])(0?\.\d+|1\.0+)(?![\d%])")
_FAKE_PROBABILITY = re.compile(r"\b(?:probability|likelihood|chance|score)\b[^.;!?]{0,40}?"
                               r"\b(?:fake|deepfake|manipulat\w*|forg\w*|synthetic)")


@dataclass(frozen=True)
class DeepfakeAnswer:
    """``fake`` verdict and ``score`` = probability that the face is fake; None when unsaid."""

    fake: bool | None
    score: float | None


def _probability_in(sentence: str) -> float | None:
    m = _PROBABILITY.search(sentence)
    if not m:
        return None
    value = float(m.group(1)) / 100 if m.group(1) else float(m.group(2))
    return value if 0.0 <= value <= 1.0 else None


def parse_deepfake(text: str) -> DeepfakeAnswer:
    """Verdict by the conclusion rules; "not fake" is real, "not authentic" is fake.

    Score: "probability/likelihood/chance ... fake ... 80%" gives 0.8 whatever the verdict
    words; otherwise a percentage or probability in the verdict's sentence is read as the
    confidence in that verdict (score = p for fake, 1 - p for real); otherwise 1.0 / 0.0.
    """
    low = text.lower()
    for sentence in _SENTENCE_END.split(low):
        if _FAKE_PROBABILITY.search(sentence):
            p = _probability_in(sentence)
            if p is not None:
                return DeepfakeAnswer(p >= 0.5, p)
    mentions = _mentions(low, _DEEPFAKE_WORDS)
    # a negated mention states the opposite verdict ("not authentic" = fake).
    flipped = [_Mention("real" if m.label == "fake" else "fake", m.start, m.end, False, m.rank)
               if m.negated else m for m in mentions]
    chosen = _conclusion(flipped)
    if chosen is None:
        return DeepfakeAnswer(None, None)
    fake = chosen.label == "fake"
    starts = [m.end() for m in _SENTENCE_END.finditer(low, 0, chosen.start)]
    end = _SENTENCE_END.search(low, chosen.end)
    p = _probability_in(low[starts[-1] if starts else 0:end.start() if end else len(low)])
    if p is None:
        return DeepfakeAnswer(fake, 1.0 if fake else 0.0)
    return DeepfakeAnswer(fake, p if fake else round(1.0 - p, 6))


# ---------------------------------------------------------------------------- dispatch

_PARSERS: dict[str, Callable[[str], object]] = {
    "expression": parse_expression, "action_units": parse_action_units,
    "attributes": parse_attributes, "age": parse_age, "deepfake": parse_deepfake,
}


def parse_answer(task: str, text: str) -> object:
    """The parser of ``task`` (one of prompts.TASKS) applied to ``text``."""
    try:
        parser = _PARSERS[task]
    except KeyError:
        raise ValueError(f"task {task!r}: expected one of {', '.join(_PARSERS)}") from None
    return parser(text)
