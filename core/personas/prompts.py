"""The project's own prompt wording for the two query modes.

A prompt is split into a *prefix* (system message: the persona and the task rules, identical for
every question a persona sees) and a *suffix* (the question and response(s)). Backends that keep a
key-value cache compute the prefix once per persona and reuse it.
"""

from __future__ import annotations

from core.personas.stories import Story

DIMENSIONS: tuple[str, ...] = ("truthfulness", "instruction_following", "helpfulness", "personal_preference")
DIMENSION_LABELS = {
    "truthfulness": "Truthfulness",
    "instruction_following": "Instruction-following",
    "helpfulness": "Helpfulness",
    "personal_preference": "Personal preference",
}
# How a judge dimension maps onto the offline corpus's aspect names (personal preference has none).
DIMENSION_TO_ASPECT = {"truthfulness": "truthfulness", "instruction_following": "instruction_following",
                       "helpfulness": "helpfulness"}

_PERSONA = (
    "Play the following person, and judge as they would, from their own life and taste.\n"
    "Who you are: {occupation}. {story}\n"
)

_SCORING_RULES = (
    "You will see a request someone sent to an AI assistant and the assistant's reply. Grade the reply "
    "as yourself on four counts, each an integer from -2 (very poor) through 0 (neutral) to 2 (excellent):\n"
    "1. Truthfulness: are the stated facts correct and grounded? Give 0 if you cannot tell.\n"
    "2. Instruction-following: does it obey what the request asked about length, format, tone or style?\n"
    "3. Helpfulness: is it on topic and does it actually help the person move forward?\n"
    "4. Personal preference: does anything in it especially suit or annoy someone like you?\n"
    "Think briefly, then finish with one line holding the four grades in that order, written exactly "
    "like [[t, i, h, p]], for example [[1, -1, 2, 0]]."
)

_PAIRWISE_RULES = (
    "You will see a request someone sent to an AI assistant and two candidate replies, A and B. "
    "Decide which reply you yourself would rather receive. Where the replies appear must not sway you. "
    "Answer with the letter only, written as [[A]] or [[B]]."
)


def persona_block(story: Story) -> str:
    return _PERSONA.format(occupation=story.occupation, story=story.story)


def scoring_prefix(story: Story) -> str:
    return persona_block(story) + "\n" + _SCORING_RULES


def pairwise_prefix(story: Story) -> str:
    return persona_block(story) + "\n" + _PAIRWISE_RULES


def scoring_suffix(prompt: str, response: str) -> str:
    return (f"REQUEST:\n{prompt}\n\nREPLY:\n{response}\n\n"
            "Remember: unsure about facts means truthfulness 0. End with [[t, i, h, p]].")


def pairwise_suffix(prompt: str, first: str, second: str) -> str:
    return (f"REQUEST:\n{prompt}\n\nREPLY A:\n{first}\n\nREPLY B:\n{second}\n\n"
            "Which reply would you rather get, A or B? Answer [[A]] or [[B]].")


# Assistant-side text after which a pairwise answer's letter is read (the rules ask for [[A]] or [[B]]).
PAIRWISE_PREFILL = "[["


def logit_cue(dimension: str) -> str:
    """Assistant-side text after which the next token is read as the grade for ``dimension``."""
    return f"My grades.\n{DIMENSION_LABELS[dimension]}:"
