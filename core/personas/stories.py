"""User stories: the project's 36 defaults and loading/validating user-supplied files.

A story file is a JSON list of objects (or a CSV with the same columns) with ``name``,
``occupation`` and ``story``; an optional ``group`` clusters related occupations for plots.
Every problem raises ``ValueError`` naming the entry (0-based index) and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STORIES_PATH = Path(__file__).with_name("stories_default.json")
REQUIRED_FIELDS = ("name", "occupation", "story")
MAX_STORY_CHARS = 4000


@dataclass(frozen=True)
class Story:
    name: str
    occupation: str
    story: str
    group: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def validate_entries(entries, source: str = "stories") -> list[Story]:
    """Turn a list of dicts into Stories or raise ValueError naming the entry index and field."""
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a list of stories, got {type(entries).__name__}")
    if not entries:
        raise ValueError(f"{source}: the file holds no stories")
    stories: list[Story] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {i}: expected an object with name, occupation, story; "
                             f"got {type(entry).__name__}")
        values = {}
        for field in REQUIRED_FIELDS:
            if field not in entry or entry[field] is None:
                raise ValueError(f"{source}: entry {i}: field '{field}' is missing")
            value = entry[field]
            if not isinstance(value, str):
                raise ValueError(f"{source}: entry {i}: field '{field}' must be text, got {type(value).__name__}")
            value = value.strip()
            if not value:
                raise ValueError(f"{source}: entry {i}: field '{field}' is empty")
            values[field] = value
        if len(values["story"]) > MAX_STORY_CHARS:
            raise ValueError(f"{source}: entry {i}: field 'story' is longer than {MAX_STORY_CHARS} characters")
        group = entry.get("group") or ""
        if not isinstance(group, str):
            raise ValueError(f"{source}: entry {i}: field 'group' must be text, got {type(group).__name__}")
        unknown = set(entry) - set(REQUIRED_FIELDS) - {"group"}
        if unknown:
            raise ValueError(f"{source}: entry {i}: unknown field(s) {sorted(unknown)}")
        key = values["name"].casefold()
        if key in seen:
            raise ValueError(f"{source}: entry {i}: field 'name' repeats entry {seen[key]} ({values['name']!r})")
        seen[key] = i
        stories.append(Story(group=group.strip(), **values))
    return stories


def parse_stories(text: str, fmt: str, source: str = "stories") -> list[Story]:
    """Parse story text in ``fmt`` 'json' or 'csv'."""
    if fmt == "json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [f for f in REQUIRED_FIELDS if f not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{source}: CSV header lacks column(s) {missing}; need name, occupation, story")
        entries = [{k: v for k, v in row.items() if k is not None and (k != "group" or v)} for row in reader]
    else:
        raise ValueError(f"{source}: unknown story format {fmt!r} (use json or csv)")
    return validate_entries(entries, source)


def load_stories(path: str | Path | None = None) -> list[Story]:
    """Load and validate a story file (.json or .csv); ``None`` or 'default' gives the 36 defaults."""
    if path is None or str(path) == "default":
        path = DEFAULT_STORIES_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read story file: {e.strerror}") from None
    fmt = "csv" if path.suffix.lower() == ".csv" else "json"
    return parse_stories(text, fmt, source=str(path))


def default_stories() -> list[Story]:
    return load_stories(DEFAULT_STORIES_PATH)


def stories_to_json(stories: list[Story]) -> str:
    return json.dumps([s.to_dict() for s in stories], indent=1, ensure_ascii=False)
