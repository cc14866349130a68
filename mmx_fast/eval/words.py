"""Answer tokens -> words -> word types, as xmed-lab/TAM's ``eval.py`` does it.

TAM (``ids_to_word_groups``, ``get_word_type``, ``words_match``) works on words, not tokens:

1. **Grouping** (:func:`mmx_fast.words.group_words`, shared with ``Explanation.word_maps``). Token ``i`` starts a new word when ``i == 0``, or its decoded string is
   "punctuation", or contains a CJK character, or starts with a space, or its raw token string starts with
   the SentencePiece marker ``"▁"``; otherwise it is appended to the previous word. Every word is stored with
   its spaces removed. TAM's punctuation test is ``word in string.punctuation``, a *substring* test: ``"."``,
   ``"./"`` and the empty string count as punctuation, ``"'s"`` does not. Newline tokens are not spaces, so
   ``".\\n\\nThe"`` is one word, as in TAM. We keep all of that.

   TAM decodes the generated ids to text and re-tokenizes it (and drops a sample whose re-tokenization has a
   different length than its list of maps). We group the generated ids directly, so no sample is dropped;
   :func:`retokenization_mismatch` tells whether TAM would have dropped it (the runner records it).

2. **Word types** (:class:`WordTyper`). TAM tags each word *on its own* with ``nltk.pos_tag([word])``:
   ``CC DT EX MD POS PRP PRP$ UH WDT WP WP$ WRB`` are function words, ``NN NNS NNP NNPS`` nouns, everything
   else (including ``IN`` prepositions and ``CD`` numbers) "others".

3. **Category matching** (:func:`word_label`). A noun gets the label of every category one of whose
   whitespace-separated name parts equals the word after ``lower()``, removing ``"-"`` and WordNet
   lemmatisation (``WordNetLemmatizer().lemmatize``, noun POS); when several categories match, the **last**
   one in the category dict's order wins (TAM overwrites ``lb`` in a loop; so with TAM's COCO dict "dog" gets
   ``hot dog`` (58) and "bear" gets ``teddy bear`` (88): kept, it is what the published numbers used). A
   noun matching no category gets label -1, function words -2, others -3.

Typers:

- :class:`NltkWordTyper`: TAM's exact typing; needs ``nltk`` with the ``averaged_perceptron_tagger(_eng)``
  and ``wordnet`` data installed (imported lazily; nltk is optional).
- :class:`FallbackWordTyper`: offline and approximate. Function words come from a closed-class list of the
  same tags; a word is a noun only if it matches a category name; everything else is "others". So nouns
  outside the categories are not seen, which changes Func-IoU's threshold (the mean over *all* nouns).
  Matching uses WordNet's noun suffix rules and the few irregular plurals of ``noun.exc`` that matter, and
  compares the candidate sets of both words (no lexicon to filter candidates with): ``glasses``/``glass``,
  ``buses``/``bus``, ``mice``/``mouse`` match; ``people``/``person`` do not (nor do they in WordNet/TAM).
- :class:`CallableWordTyper`: wraps a user function ``word -> "function" | "noun" | "others"``.

:func:`get_word_typer` picks one: ``"auto"`` (NLTK when its data is installed, else the fallback),
``"nltk"``, ``"fallback"``, ``"module:attribute"`` (a typer object, class or function to import), a
``WordTyper`` or a function.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

# the grouping lives in mmx_fast.words (shared with Explanation.word_maps); re-exported here
from ..words import group_words, has_cjk, is_punctuation, token_pieces  # noqa: F401

WORD_TYPES = ("function", "noun", "others")
FUNCTION_TAGS = frozenset({"CC", "DT", "EX", "MD", "POS", "PRP", "PRP$", "UH", "WDT", "WP", "WP$", "WRB"})
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})

# Labels TAM gives to words that are not matched nouns.
LABEL_NOUN_OTHER = -1
LABEL_FUNCTION = -2
LABEL_OTHERS = -3


# --------------------------------------------------------------------------------------------------------
# grouping tokens into words
# --------------------------------------------------------------------------------------------------------
def retokenization_mismatch(tokenizer: Any, ids: Sequence[int]) -> bool:
    """True when TAM would drop this answer: re-tokenizing its decoded text gives a different token count."""
    if not ids:
        return False
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
    return len(tokenizer.tokenize(text)) != len(ids)


# --------------------------------------------------------------------------------------------------------
# word typers
# --------------------------------------------------------------------------------------------------------
@runtime_checkable
class WordTyper(Protocol):
    """How words are typed and matched to category names.

    name:  shown in reports (``"nltk"``, ``"fallback"``, ...).
    exact: True when the typer reproduces TAM's NLTK typing.
    word_type(word, categories): ``"function"``, ``"noun"`` or ``"others"``; ``categories`` are the data set's
        category names (the fallback needs them to find nouns; NLTK ignores them).
    same_word(a, b): whether two words (already lower-cased, ``"-"`` removed) have the same noun lemma.
    """

    name: str
    exact: bool

    def word_type(self, word: str, categories: Sequence[str]) -> str: ...

    def same_word(self, a: str, b: str) -> bool: ...


def _normalise(word: str) -> str:
    return word.lower().replace("-", "")


def words_match(typer: WordTyper, category_name: str, word: str) -> bool:
    """TAM's ``words_match``: any whitespace-separated part of the category name is the same word."""
    w = _normalise(word)
    return any(typer.same_word(_normalise(part), w) for part in category_name.split())


def word_label(typer: WordTyper, word: str, categories: Mapping[str, int]) -> int:
    """TAM's label of one word: the matched category id (last match in dict order wins), -1 for a noun
    matching none, -2 for a function word, -3 for others."""
    kind = typer.word_type(word, list(categories))
    if kind not in WORD_TYPES:
        raise ValueError(
            f"word typer {typer.name!r} returned {kind!r} for {word!r}; expected one of {WORD_TYPES}"
        )
    if kind == "noun":
        label = LABEL_NOUN_OTHER
        for name, value in categories.items():
            if words_match(typer, name, word):
                label = int(value)
        return label
    return LABEL_FUNCTION if kind == "function" else LABEL_OTHERS


def word_labels(typer: WordTyper, words: Sequence[str], categories: Mapping[str, int]) -> list[int]:
    return [word_label(typer, w, categories) for w in words]


class NltkWordTyper:
    """TAM's typing: ``nltk.pos_tag([word])`` and ``WordNetLemmatizer().lemmatize`` (noun POS).

    ``pos_tag`` / ``lemmatize`` can be injected (tests); by default nltk is imported lazily and
    :meth:`available` says whether its tagger and WordNet data are installed."""

    name = "nltk"
    exact = True

    def __init__(
        self, pos_tag: Callable | None = None, lemmatize: Callable[[str], str] | None = None
    ) -> None:
        if pos_tag is None or lemmatize is None:
            import nltk
            from nltk.stem import WordNetLemmatizer

            pos_tag = pos_tag or nltk.pos_tag
            lemmatize = lemmatize or WordNetLemmatizer().lemmatize
        self._pos_tag = pos_tag
        self._lemmatize = functools.lru_cache(maxsize=65536)(lemmatize)
        self._tag = functools.lru_cache(maxsize=65536)(self._tag_uncached)

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, "") when nltk, its POS tagger and WordNet all work here; else (False, why)."""
        try:
            import nltk
            from nltk.stem import WordNetLemmatizer
        except ImportError:
            return False, "nltk is not installed (pip install nltk)"
        try:
            nltk.pos_tag(["dog"])
        except LookupError:
            return False, "nltk's averaged_perceptron_tagger data is not installed"
        except Exception as e:  # a broken data install
            return False, f"nltk.pos_tag fails: {e}"
        try:
            WordNetLemmatizer().lemmatize("dogs")
        except LookupError:
            return False, "nltk's wordnet data is not installed"
        except Exception as e:
            return False, f"WordNet lemmatizer fails: {e}"
        return True, ""

    def _tag_uncached(self, word: str) -> str:
        return str(self._pos_tag([word])[0][1])

    def word_type(self, word: str, categories: Sequence[str] = ()) -> str:
        tag = self._tag(word)
        if tag in FUNCTION_TAGS:
            return "function"
        if tag in NOUN_TAGS:
            return "noun"
        return "others"

    def same_word(self, a: str, b: str) -> bool:
        return self._lemmatize(a) == self._lemmatize(b)


# Closed-class words for the tags TAM counts as function words (CC DT EX MD POS PRP PRP$ UH WDT WP WP$ WRB).
# Ambiguous words that NLTK tags otherwise in isolation ("that" -> IN, "so" -> RB) are left out.
FUNCTION_WORDS = frozenset(
    """
    and or but nor yet plus
    a an the this these those some any each every no all both another either neither
    there
    can could may might must shall should will would cannot
    's '
    i you he she it we they me him her us them myself yourself himself herself itself ourselves yourselves
    themselves
    my your his its our their
    oh yes hello wow hey
    which whatever whichever
    who what whom whoever
    whose
    where when why how whenever wherever
    """.split()
)

# WordNet's noun detachment rules (morphy) and the irregular plurals of noun.exc that a caption may use.
_NOUN_RULES = (
    ("s", ""),
    ("ses", "s"),
    ("ves", "f"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)
_NOUN_EXCEPTIONS = {
    "children": "child",
    "feet": "foot",
    "geese": "goose",
    "knives": "knife",
    "leaves": "leaf",
    "mice": "mouse",
    "oxen": "ox",
    "teeth": "tooth",
    "wives": "wife",
    "lives": "life",
    "halves": "half",
    "loaves": "loaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "calves": "calf",
    "dice": "die",
    "cacti": "cactus",
}


def _noun_forms(word: str) -> frozenset[str]:
    """The word and every form WordNet's morphy could reduce it to (without a lexicon to filter them)."""
    if word in _NOUN_EXCEPTIONS:
        return frozenset({word, _NOUN_EXCEPTIONS[word]})
    forms = {word}
    for old, new in _NOUN_RULES:
        if word.endswith(old) and len(word) > len(old):
            forms.add(word[: -len(old)] + new)
    return frozenset(forms)


class FallbackWordTyper:
    """Offline, approximate typing (see the module docstring): closed-class function words, nouns = words
    matching a category name, candidate-set plural matching."""

    name = "fallback"
    exact = False

    def word_type(self, word: str, categories: Sequence[str] = ()) -> str:
        w = _normalise(word)
        if w in FUNCTION_WORDS:
            return "function"
        if any(words_match(self, c, word) for c in categories):
            return "noun"
        return "others"

    def same_word(self, a: str, b: str) -> bool:
        return a == b or bool(_noun_forms(a) & _noun_forms(b))


class CallableWordTyper:
    """A user function ``word -> "function" | "noun" | "others"`` as a typer; ``same_word`` defaults to the
    fallback's plural matching."""

    exact = False

    def __init__(
        self,
        word_type: Callable[[str], str],
        same_word: Callable[[str, str], bool] | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(word_type):
            raise TypeError(f"word_type={word_type!r} is not callable; expected a function word -> type")
        self._word_type = word_type
        self._same_word = same_word or FallbackWordTyper().same_word
        self.name = name or getattr(word_type, "__name__", "custom")

    def word_type(self, word: str, categories: Sequence[str] = ()) -> str:
        return self._word_type(word)

    def same_word(self, a: str, b: str) -> bool:
        return bool(self._same_word(a, b))


SPEC_FORM = (
    "auto, nltk, fallback or module:function (module:attribute naming a function word -> type, a WordTyper "
    "or its class)"
)


def _import_object(spec: str) -> Any:
    """The object ``module:attribute`` names; every failure (no such module, an import that raises, no such
    attribute) is a ``ValueError`` naming ``spec`` and the expected form."""
    module, _, attr = spec.partition(":")
    if not module.strip() or not attr.strip() or ":" in attr:
        raise ValueError(f"word typer {spec!r} is not allowed; expected {SPEC_FORM}")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # ModuleNotFoundError, or whatever the module raises while importing
        raise ValueError(
            f"word typer {spec!r}: cannot import module {module!r} ({type(e).__name__}: {e}); expected {SPEC_FORM}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"word typer {spec!r}: module {module!r} has no attribute {attr!r}; expected {SPEC_FORM}"
            ) from None
    if isinstance(obj, str) or not (callable(obj) or hasattr(obj, "word_type")):
        raise ValueError(
            f"word typer {spec!r} names a {type(obj).__name__}, not a WordTyper, its class or a function"
        )
    return obj


def get_word_typer(spec: str | WordTyper | Callable[[str], str] | None = "auto") -> WordTyper:
    """A :class:`WordTyper` from a name (``auto``, ``nltk``, ``fallback``), ``"module:attribute"`` (an object,
    class or function), a typer object or a function ``word -> type``."""
    if spec is None:
        spec = "auto"
    if isinstance(spec, str):
        if spec == "auto":
            ok, _ = NltkWordTyper.available()
            return NltkWordTyper() if ok else FallbackWordTyper()
        if spec == "nltk":
            ok, why = NltkWordTyper.available()
            if not ok:
                raise ValueError(
                    f"word typer 'nltk' is not usable: {why}; install nltk with the averaged_perceptron_tagger "
                    "and wordnet data, or use --word-typer fallback (approximate)"
                )
            return NltkWordTyper()
        if spec == "fallback":
            return FallbackWordTyper()
        obj = _import_object(spec)
        if isinstance(obj, type):
            try:
                obj = obj()
            except Exception as e:
                raise ValueError(
                    f"word typer {spec!r}: cannot create {obj.__name__}() ({type(e).__name__}: {e})"
                ) from None
        return get_word_typer(obj)
    if isinstance(spec, WordTyper) and hasattr(spec, "name"):
        return spec
    if callable(spec):
        return CallableWordTyper(spec)
    raise TypeError(
        f"word typer {spec!r} is not supported; expected a name, module:attribute, a WordTyper or a function"
    )
