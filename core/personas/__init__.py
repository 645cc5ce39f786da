"""Persona simulation: user stories, LLM judges, pairwise & scoring modes, analyses.

Heavy parts (transformers) load lazily: importing this package is cheap.
"""

from core.personas.parse import parse_choice, parse_scores
from core.personas.stories import DEFAULT_STORIES_PATH, Story, default_stories, load_stories, parse_stories

__all__ = ["DEFAULT_STORIES_PATH", "Story", "default_stories", "load_stories", "parse_choice", "parse_scores",
           "parse_stories"]
