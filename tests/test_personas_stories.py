"""Story files: the defaults, and bad files whose errors name the entry and the field."""

from __future__ import annotations

import json

import pytest

from core.personas import default_stories, load_stories, parse_stories


def test_defaults_have_36_stories_with_the_deliberate_near_neighbours():
    stories = default_stories()
    assert len(stories) == 36
    occ = [s.occupation for s in stories]
    assert occ.count("police officer") == 2 and occ.count("software programmer") == 2
    for needed in ("singer", "rapper", "politician", "security guard", "elementary-school pupil"):
        assert needed in occ
    assert len({s.name for s in stories}) == 36
    assert all(len(s.story.split()) >= 30 for s in stories)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("entries, needle", [
    ([{"name": "A", "occupation": "x", "story": "s"}, {"name": "B", "story": "s"}], "entry 1: field 'occupation' is missing"),
    ([{"name": "A", "occupation": "x", "story": "   "}], "entry 0: field 'story' is empty"),
    ([{"name": "A", "occupation": 3, "story": "s"}], "entry 0: field 'occupation' must be text"),
    ([{"name": "A", "occupation": "x", "story": "s"}, {"name": "a", "occupation": "y", "story": "t"}],
     "entry 1: field 'name' repeats entry 0"),
    ([{"name": "A", "occupation": "x", "story": "s", "age": 3}], "entry 0: unknown field(s) ['age']"),
    (["just text"], "entry 0: expected an object"),
    ([], "holds no stories"),
])
def test_bad_json_story_files_name_entry_and_field(tmp_path, entries, needle):
    p = _write(tmp_path, "s.json", json.dumps(entries))
    with pytest.raises(ValueError) as e:
        load_stories(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_broken_json_reports_position(tmp_path):
    with pytest.raises(ValueError, match=r"not valid JSON \(line 2"):
        load_stories(_write(tmp_path, "s.json", '[\n{"name": }]'))


def test_csv_round_trip_and_errors(tmp_path):
    ok = load_stories(_write(tmp_path, "s.csv", 'name,occupation,story\nAnn,nurse,"Works nights, loves cats."\n'))
    assert ok[0].name == "Ann" and ok[0].story == "Works nights, loves cats." and ok[0].group == ""
    with pytest.raises(ValueError, match=r"CSV header lacks column\(s\) \['story'\]"):
        load_stories(_write(tmp_path, "b.csv", "name,occupation\nAnn,nurse\n"))
    with pytest.raises(ValueError, match="entry 1: field 'occupation' is empty"):
        parse_stories("name,occupation,story\nA,x,s\nB,,t\n", "csv")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read story file"):
        load_stories(tmp_path / "nope.json")
