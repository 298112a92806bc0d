"""The spot-check comparator: agreement of the first N words, tolerant of where an answer was cut."""

from control_plane.trust.compare import agree


def test_same_start_agrees_whatever_comes_after_the_first_words():
    a = "The capital of France is Paris . It is known for the Eiffel Tower"
    b = "The capital of France is Paris . It has many museums"
    assert agree(a, b, 8) and not agree(a, b, 12)


def test_a_different_early_word_disagrees():
    assert not agree("The capital of France is Paris", "The capital of France is Lyon")
    assert not agree("alpha bravo charlie", "kilo lima mike november oscar papa quebec romeo")


def test_whitespace_runs_are_one_space():
    assert agree("Hello   big\nworld", "Hello big world")


def test_a_shorter_answer_is_compared_over_its_length_with_its_last_word_as_a_prefix():
    assert agree("Hello big wor", "Hello big world and more")  # cut inside a word by max_tokens
    assert agree("Hello big", "Hello big world")
    assert not agree("Hello bag", "Hello big world")


def test_empty_answers_agree_only_with_empty_ones():
    assert agree("", "  ") and not agree("", "Hello")
