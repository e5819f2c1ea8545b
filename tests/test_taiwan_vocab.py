"""Every entry of the curated override list, with the example it carries."""

import pytest

from guardedchat.taiwan import curated_vocabulary, to_taiwan

VOCAB = curated_vocabulary()


@pytest.mark.parametrize("source,target,example,expected", VOCAB["replace"], ids=[e[0] for e in VOCAB["replace"]])
def test_replace_entry(source, target, example, expected):
    assert source in example and target in expected
    assert to_taiwan(example) == expected


@pytest.mark.parametrize("phrase,example", VOCAB["keep"], ids=[e[0] for e in VOCAB["keep"]])
def test_keep_entry(phrase, example):
    assert phrase in example
    assert to_taiwan(example) == example


@pytest.mark.parametrize("source,target,example,expected", VOCAB["simplified_replace"],
                         ids=[e[0] for e in VOCAB["simplified_replace"]])
def test_simplified_only_entry(source, target, example, expected):
    assert target in expected
    assert to_taiwan(example) == expected
