"""Which language a text is in, and whether its words are real: the scores of a steered generation.

Language is told by function words (a word listed for two languages votes for neither) and by
language-specific letters; no model is involved, so the score cannot be steered along with the host.
"""

from __future__ import annotations

import re

from bricks.corpus import Corpus

# Frequent function words; a word in two lists is dropped from both (see _EXCLUSIVE), so every listed
# word votes for one language only.
_WORDS = {
    "en": """the of and to in is was that for it with as his on be at by this had not are but from or have an
        they which one you were her all she there would their we him been has when who will more no if out so
        said what up its about into than them can only other new some could time these two may then do first
        any my now such like our over man me even most made after also did many before must through back
        years where much your way well down should because each just those people how too little state good
        very make world still own see men work long get here between both life being under never day same
        another know while last might us great old year off come since against go came right used take three
        i it's don't think want there's what's he she we they them your yours being does doesn't isn't
        a son car i'm you're that's let's""",
    "fr": """le la les de des du un une et est en que qui dans pour pas sur au aux avec ce cette ces il elle
        ils elles nous vous je tu on ne se sa son ses leur leurs mais ou où donc car plus par été être avoir
        fait faire comme tout tous toute toutes aussi bien très peu sans sous entre après avant depuis chez
        encore alors déjà ici là y a ont sont était étaient sera peut doit faut quand comment pourquoi parce
        lui eux moi toi mon ma mes ton ta tes notre nos votre vos quel quelle quels quelles dont ceci cela
        ça c'est d'un d'une l'on qu'il jour temps monde chose fois deux trois beaucoup toujours jamais rien
        personne autre autres même mêmes ainsi puis enfin non oui avait avons avez suis es sommes êtes""",
    "de": """der die das und ist nicht ein eine einen einem einer eines zu den dem des mit sich auf für von
        im ins am auch es sie er wir ihr ich du man wird werden wurde wurden sind war waren hat haben hatte
        hatten kann können muss müssen soll sollen noch nur schon sehr mehr wie wo wann warum weil dass wenn
        aber oder doch dann denn also bei nach aus über unter vor zwischen durch gegen ohne um bis seit
        dieser diese dieses jeder jede jedes kein keine keinen mein meine sein seine ihre unser unsere euer
        was wer welche welcher hier dort heute immer wieder nichts etwas alle alles viel viele zwei drei
        jahr jahre zeit tag mann frau kind haus welt leben ja nein gibt gut neue neuen großen""",
}
_ACCENTS = {"fr": set("éèêëàâçîïôûùœ"), "de": set("äöüß")}
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def _exclusive() -> dict[str, set[str]]:
    sets = {lang: set(words.split()) for lang, words in _WORDS.items()}
    return {lang: s - set().union(*(o for other, o in sets.items() if other != lang)) for lang, s in sets.items()}


_EXCLUSIVE = _exclusive()


def word_language(word: str) -> str | None:
    """The language a word votes for: a listed function word, else a language-specific letter."""
    w = word.lower()
    for lang, words in _EXCLUSIVE.items():
        if w in words:
            return lang
    for lang, letters in _ACCENTS.items():
        if any(ch in letters for ch in w):
            return lang
    return None


def language_shares(text: str) -> dict[str, float]:
    """Share of each language among a text's identifiable words, plus `coverage` (identified / all
    words). A content word such as "table" identifies nothing; function words make up ~40% of
    running text in all three languages, enough to tell them apart on a sentence."""
    words = _WORD_RE.findall(text)
    votes = [lang for lang in map(word_language, words) if lang is not None]
    shares = {lang: (votes.count(lang) / len(votes) if votes else 0.0) for lang in _WORDS}
    shares["coverage"] = len(votes) / len(words) if words else 0.0
    return shares


def word_vocab(corpus: Corpus) -> set[str]:
    """Every word of a corpus, lowercased: a dictionary for `known_word_rate`."""
    return {w.lower() for d in corpus for w in _WORD_RE.findall(d.text)}


def known_word_rate(text: str, vocab: set[str]) -> float:
    """Share of a text's words found in `vocab`: broken output ("toujouté", "onleur") scores low where
    the language share alone cannot tell it from real French. A small vocabulary misses rare real
    words too, so compare settings with each other and with the unsteered row, not with 1."""
    words = [w.lower() for w in _WORD_RE.findall(text)]
    return sum(w in vocab for w in words) / len(words) if words else 0.0


def repetition(text: str, n: int = 3) -> float:
    """Repeated n-gram rate over words: 1 - distinct/total n-grams (0 = no repeats, ~1 = one loop)."""
    words = text.lower().split()
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def score_generations(texts: list[str], target: str, dominant: str, vocab: set[str] | None = None,
                      ) -> dict[str, float]:
    shares = [language_shares(t) for t in texts]
    n = max(len(texts), 1)
    mean = lambda key: sum(s[key] for s in shares) / n  # noqa: E731
    return {"target_share": mean(target), "dominant_share": mean(dominant), "coverage": mean("coverage"),
            "repetition": sum(repetition(t) for t in texts) / n,
            "known_words": sum(known_word_rate(t, vocab) for t in texts) / n if vocab else float("nan")}
