"""Tests for ppo.demo.corpus: deterministic grammar text with balanced sentiment words."""

from collections import Counter

from ppo.demo import corpus


def test_sentences_deterministic():
    assert corpus.sentences(50, seed=3) == corpus.sentences(50, seed=3)
    assert corpus.sentences(50, seed=3) != corpus.sentences(50, seed=4)
    assert len(corpus.sentences(7)) == 7


def test_sentences_are_grammar_words():
    vocab = corpus.vocabulary()
    for s in corpus.sentences(200, seed=1):
        assert s.endswith(" .")
        assert set(s.split()) <= vocab, s


def test_both_sentiment_lists_appear_and_are_balanced():
    assert len(corpus.POSITIVE_WORDS) >= 20 and len(corpus.NEGATIVE_WORDS) >= 20
    assert not set(corpus.POSITIVE_WORDS) & set(corpus.NEGATIVE_WORDS)
    counts = Counter(" ".join(corpus.sentences(3000, seed=0)).split())
    total = sum(counts.values())
    pos = sum(counts[w] for w in corpus.POSITIVE_WORDS)
    neg = sum(counts[w] for w in corpus.NEGATIVE_WORDS)
    assert pos > 0 and neg > 0
    assert 0.8 < pos / neg < 1.25  # neither dominates
    assert (pos + neg) / total < 0.15  # modest frequency
    # Most of each list actually shows up.
    assert sum(counts[w] > 0 for w in corpus.POSITIVE_WORDS) >= 0.9 * len(corpus.POSITIVE_WORDS)
    assert sum(counts[w] > 0 for w in corpus.NEGATIVE_WORDS) >= 0.9 * len(corpus.NEGATIVE_WORDS)


def test_prompts():
    ps = corpus.prompts(100, seed=0)
    assert len(ps) == 100 and all(p.strip() for p in ps)
    assert ps == corpus.prompts(100, seed=0)
    assert any(p.split()[-1] in corpus.NOUNS for p in ps)
    assert all(" a a" not in p and " a e" not in p for p in ps)


def test_documents_on_topic():
    docs = corpus.documents(50, seed=2)
    assert docs == corpus.documents(50, seed=2)
    for prompt, response in docs:
        noun = prompt.split()[-1] if prompt.split()[-1] in corpus.NOUNS else prompt.split()[-2]
        assert noun in corpus.NOUNS
        n_sentences = response.count(" .")
        assert 1 <= n_sentences <= 3
        assert noun in response.split(" .")[0].split()
