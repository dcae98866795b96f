"""QA answer metrics on hand-made cases; the arithmetic is in the comments."""
import pytest

from solopo.scoring import f1, normalize_answer, sub_em


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel Tower", "eiffel tower"),            # lower case, article dropped
    ("  an   apple,\ta pear!  ", "apple pear"),      # both articles and the punctuation go, whitespace collapses
    ("U.S.A.", "usa"),                               # punctuation is deleted, not replaced by a space
    ("Theatre another", "theatre another"),          # articles only as whole words
    ("3,677 seated", "3677 seated"),
    ("Antonín Dvořák", "antonín dvořák"),            # letters outside ASCII are kept
    ("The", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_sub_em():
    # "greenwich village new york city" contains "new york city"
    assert sub_em("It is in Greenwich Village, New York City.", ["New York City"]) == 1.0
    assert sub_em("The answer is 1,946.", ["1946"]) == 1.0       # "answer is 1946" contains "1946"
    assert sub_em("Peking", ["Beijing", "Peking"]) == 1.0         # any gold answer will do
    assert sub_em("Beijing", "Beijing") == 1.0                    # a bare string is one answer
    assert sub_em("Shanghai", ["Beijing"]) == 0.0
    assert sub_em("New York", ["New York City"]) == 0.0           # the gold must be inside the prediction
    # Character containment, as the paper defines it: "no" is inside "know".
    assert sub_em("I do not know", ["no"]) == 1.0


def test_sub_em_ignores_golds_that_normalise_to_nothing():
    # "" would be contained in every prediction
    assert sub_em("Paris", ["The", "Lyon"]) == 0.0
    with pytest.raises(ValueError, match="no gold answers"):
        sub_em("Paris", [])


def test_f1():
    # prediction "eiffel tower paris" (3 tokens), gold "eiffel tower" (2): 2 shared
    # precision 2/3, recall 2/2, F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    assert f1("The Eiffel Tower, Paris", ["Eiffel Tower"]) == pytest.approx(0.8)
    # against "tower" alone: shared 1, precision 1/3, recall 1, F1 = 2 * (1/3) / (4/3) = 0.5; the max is 0.8
    assert f1("The Eiffel Tower, Paris", ["tower", "Eiffel Tower"]) == pytest.approx(0.8)
    assert f1("Eiffel Tower", ["the eiffel tower"]) == 1.0
    assert f1("Louvre", ["Eiffel Tower"]) == 0.0
    assert f1("", ["Eiffel Tower"]) == 0.0


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # prediction "new new york" vs gold "new york": shared = min(2, 1) new + 1 york = 2
    # precision 2/3, recall 2/2, F1 = 0.8
    assert f1("new new york", ["New York"]) == pytest.approx(0.8)
    # prediction "york york", gold "new york york": shared 2, precision 2/2, recall 2/3, F1 = 0.8
    assert f1("york york", ["new york york"]) == pytest.approx(0.8)
