"""AppTest: a shared link whose users cannot be read says so on the Users page (and why), then shows the
two-opposed preset; a good link shows no such warning."""

from tests.app.figures import array, figure, open_page


def _users_page(**params):
    at = open_page("app_pages/users.py", **params)
    assert not at.exception
    return at


def _link_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "link's users could not be read" in w.value]


def test_unreadable_users_link_is_named_and_falls_back_to_two_opposed():
    at = _users_page(preset="custom", users="zzz")
    warned = _link_warnings(at)
    assert len(warned) == 1, [w.value for w in at.warning]
    assert "users=zzz" in warned[0] and "'zzz' is not numbers" in warned[0] and "two-opposed" in warned[0]
    # still usable: the two-opposed users and their 2 x 2 disagreement map
    assert at.selectbox(key="preset").value == "two-opposed"
    assert array(figure(at, "disagreement_heatmap")["data"][0]["z"]).shape == (2, 2)


def test_good_users_link_shows_no_warning():
    at = _users_page(preset="custom", users="1,0,0,0;0,1,0,0;0.25,0.25,0.25,0.25")
    assert not _link_warnings(at)
    assert array(figure(at, "disagreement_heatmap")["data"][0]["z"]).shape == (3, 3)
