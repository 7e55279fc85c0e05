"""A tiny, deterministic English-like corpus generated from a hand-written grammar.

Why: the demo and the tests need a tokenizer and a small model that can be
trained from scratch with no downloads. A grammar gives text that is
regular enough for a tiny model to learn in minutes, and the
``POSITIVE_WORDS`` / ``NEGATIVE_WORDS`` lists give a rule judge something
to reward: both appear equally often (and neither dominates), so a policy
starts neutral and PPO has to move it towards the positive words.

Everything is driven by ``random.Random(seed)``, so the same arguments always
give the same text, on any machine and Python version.
"""

from __future__ import annotations

import random
import re

DETERMINERS = ("the", "a", "this", "that", "every", "one", "my", "your", "our", "their")

NOUNS = (
    "dog", "cat", "bird", "fish", "horse", "mouse", "rabbit", "fox", "bear", "wolf",
    "child", "teacher", "farmer", "doctor", "king", "queen", "sailor", "baker", "girl", "boy",
    "house", "garden", "river", "forest", "mountain", "city", "village", "road", "bridge", "tower",
    "ball", "book", "box", "cup", "chair", "table", "door", "window", "lamp", "clock",
    "tree", "flower", "stone", "cloud", "star", "moon", "sun", "sea", "hill", "field",
    "ship", "train", "car", "boat", "letter", "song", "story", "picture", "apple", "bread",
)

# Neutral adjectives carry no sentiment; they make up most adjective slots.
NEUTRAL_ADJECTIVES = (
    "small", "big", "old", "young", "red", "blue", "green", "yellow", "white", "black",
    "tall", "short", "long", "round", "square", "heavy", "light", "quiet", "loud", "fast",
    "slow", "wooden", "little", "large", "new", "wet", "dry", "soft", "hard", "thin",
    "wide", "narrow", "plain", "distant", "nearby", "early", "late", "simple", "empty", "full",
)

POSITIVE_ADJECTIVES = (
    "good", "happy", "bright", "kind", "warm", "lovely", "gentle", "joyful", "friendly", "beautiful",
    "cheerful", "brave", "wonderful", "calm", "sweet", "clever", "generous", "pleasant", "glad", "wise",
)
POSITIVE_ADVERBS = ("happily", "kindly", "gently", "warmly", "cheerfully", "bravely", "gladly", "wisely")

NEGATIVE_ADJECTIVES = (
    "bad", "sad", "dark", "cruel", "cold", "ugly", "angry", "gloomy", "nasty", "awful",
    "bitter", "rude", "lonely", "broken", "dirty", "grim", "mean", "terrible", "weak", "foolish",
)
NEGATIVE_ADVERBS = ("sadly", "cruelly", "coldly", "angrily", "badly", "rudely", "bitterly", "foolishly")

#: Words a rule judge can reward (adjectives and adverbs).
POSITIVE_WORDS = POSITIVE_ADJECTIVES + POSITIVE_ADVERBS
#: Words a rule judge can penalise; as frequent in the corpus as POSITIVE_WORDS.
NEGATIVE_WORDS = NEGATIVE_ADJECTIVES + NEGATIVE_ADVERBS


def lexicon(kind: str) -> list[str]:
    """The demo's word list `positive` or `negative`, for conf/judge/rule.yaml to name
    (`{_target_: ppo.demo.corpus.lexicon, kind: positive}`) instead of copying it."""
    words = {"positive": POSITIVE_WORDS, "negative": NEGATIVE_WORDS}
    if kind not in words:
        raise ValueError(f"unknown lexicon {kind!r}: choose positive or negative")
    return list(words[kind])

NEUTRAL_ADVERBS = (
    "quickly", "slowly", "quietly", "loudly", "often", "again", "today", "yesterday", "now", "soon",
    "always", "rarely", "carefully", "suddenly", "early", "late", "once", "twice", "there", "here",
)

TRANSITIVE_VERBS = (
    "sees", "finds", "likes", "takes", "holds", "watches", "follows", "carries", "opens", "paints",
    "builds", "helps", "visits", "wants", "keeps", "brings", "moves", "reads", "hears", "makes",
    "pushes", "pulls", "meets", "remembers", "draws", "cleans", "fixes", "chases", "greets", "counts",
)
INTRANSITIVE_VERBS = (
    "sleeps", "runs", "walks", "sings", "waits", "smiles", "jumps", "swims", "falls", "rests",
    "laughs", "cries", "dances", "shines", "grows", "stays", "listens", "plays", "works", "wanders",
)
PREPOSITIONS = ("near", "under", "behind", "beside", "inside", "above", "across", "by", "with", "past")
CONJUNCTIONS = ("and", "but", "because", "while", "so", "when")

# Chance that an adjective/adverb slot is filled with a sentiment word; split
# evenly between positive and negative so neither dominates.
SENTIMENT_RATE = 0.3

PROMPT_TEMPLATES = (
    "tell me about the {noun}",
    "write about a {adj} {noun}",
    "describe the {noun}",
    "what does the {noun} do",
    "write a sentence about the {adj} {noun}",
    "tell a story about a {noun}",
    "say something about the {noun}",
)


def _adjective(rng: random.Random) -> str:
    r = rng.random()
    if r < SENTIMENT_RATE / 2:
        return rng.choice(POSITIVE_ADJECTIVES)
    if r < SENTIMENT_RATE:
        return rng.choice(NEGATIVE_ADJECTIVES)
    return rng.choice(NEUTRAL_ADJECTIVES)


def _adverb(rng: random.Random) -> str:
    r = rng.random()
    if r < SENTIMENT_RATE / 2:
        return rng.choice(POSITIVE_ADVERBS)
    if r < SENTIMENT_RATE:
        return rng.choice(NEGATIVE_ADVERBS)
    return rng.choice(NEUTRAL_ADVERBS)


def _article(det: str, next_word: str) -> str:
    """Turn "a" into "an" before a vowel, so the text reads like English."""
    return "an" if det == "a" and next_word[0] in "aeiou" else det


def _noun_phrase(rng: random.Random, noun: str | None = None) -> str:
    noun = noun or rng.choice(NOUNS)
    words = [_adjective(rng) for _ in range(rng.choices((0, 1, 2), (0.45, 0.45, 0.1))[0])]
    words.append(noun)
    det = rng.choice(DETERMINERS)
    return " ".join([_article(det, words[0])] + words)


def _verb_phrase(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        parts = [rng.choice(TRANSITIVE_VERBS), _noun_phrase(rng)]
    elif kind < 0.8:
        parts = [rng.choice(INTRANSITIVE_VERBS)]
    else:
        parts = ["is", _adjective(rng)]
    if rng.random() < 0.3:
        parts += [rng.choice(PREPOSITIONS), _noun_phrase(rng)]
    if rng.random() < 0.35:
        parts.append(_adverb(rng))
    return " ".join(parts)


def _clause(rng: random.Random, subject: str | None = None) -> str:
    return f"{_noun_phrase(rng, subject)} {_verb_phrase(rng)}"


def _sentence(rng: random.Random, subject: str | None = None) -> str:
    """One sentence: a clause, sometimes joined to a second by a conjunction."""
    text = _clause(rng, subject)
    if rng.random() < 0.3:
        text += f" {rng.choice(CONJUNCTIONS)} {_clause(rng)}"
    return text + " ."


def _prompt(rng: random.Random) -> tuple[str, str]:
    """A prompt and the noun it is about (so a response can stay on topic)."""
    noun = rng.choice(NOUNS)
    template = rng.choice(PROMPT_TEMPLATES)
    text = template.format(noun=noun, adj=_adjective(rng))
    return re.sub(r"\ba (?=[aeiou])", "an ", text), noun


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` grammatical sentences such as ``"the small dog sees a red ball ."``."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` short prompts such as ``"tell me about the dog"``."""
    rng = random.Random(seed)
    return [_prompt(rng)[0] for _ in range(n)]


def documents(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs for pre-training a chat model.

    The response is 1-3 sentences and its first sentence has the prompt's noun
    as subject, so the model learns to answer on topic.
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        prompt, noun = _prompt(rng)
        count = rng.randint(1, 3)
        body = [_sentence(rng, noun)]
        body += [_sentence(rng, noun if rng.random() < 0.5 else None) for _ in range(count - 1)]
        docs.append((prompt, " ".join(body)))
    return docs


def vocabulary() -> set[str]:
    """Every word the grammar can produce (handy for tests and tokenizer sizing)."""
    words = set(DETERMINERS + NOUNS + NEUTRAL_ADJECTIVES + POSITIVE_WORDS + NEGATIVE_WORDS)
    words |= set(NEUTRAL_ADVERBS + TRANSITIVE_VERBS + INTRANSITIVE_VERBS + PREPOSITIONS + CONJUNCTIONS)
    words |= {"an", "is", "."}
    for template in PROMPT_TEMPLATES:
        words |= set(template.replace("{noun}", "").replace("{adj}", "").split())
    return words
