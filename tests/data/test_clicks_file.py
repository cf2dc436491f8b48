import json

import pytest

from segfm.data.io.clicks_file import (
    ClassClicks,
    check_in_bounds,
    read_clicks_file,
    write_clicks_file,
)
from segfm.errors import DataError


def _write(tmp_path, content, raw=False):
    path = tmp_path / "clicks.json"
    path.write_text(content if raw else json.dumps(content))
    return path


def test_read_known_file(tmp_path):
    path = _write(
        tmp_path,
        {
            "case_01": {
                "1": {"fg": [[3, 4, 5], [6, 7.5, 8]], "bg": [[0, 0, 1]]},
                "liver": {"box": [1, 2, 3, 4, 5, 6]},
            },
            "case_02": {"2": {"bg": [[9, 9, 9]], "fg": []}},
        },
    )
    out = read_clicks_file(path)
    assert set(out) == {"case_01", "case_02"}
    assert out["case_01"]["1"] == ClassClicks(
        fg=((3.0, 4.0, 5.0), (6.0, 7.5, 8.0)), bg=((0.0, 0.0, 1.0),), box=None
    )
    assert out["case_01"]["liver"] == ClassClicks(box=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0))
    assert out["case_02"]["2"].fg == () and out["case_02"]["2"].bg == ((9.0, 9.0, 9.0),)


def test_round_trip(tmp_path):
    clicks = {
        "a": {"1": ClassClicks(fg=((1.0, 2.0, 3.0),), bg=((4.0, 5.5, 6.0),))},
        "b": {
            "3": ClassClicks(box=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0)),
            "7": ClassClicks(fg=((0, 0, 0),)),
        },
    }
    path = tmp_path / "sub" / "clicks.json"
    write_clicks_file(path, clicks)
    assert read_clicks_file(path) == clicks
    written = json.loads(path.read_text())["a"]["1"]
    assert [type(v) for v in written["fg"][0]] == [int, int, int]  # integral values as integers
    assert written["bg"] == [[4, 5.5, 6]] and "box" not in written
    assert [p.name for p in path.parent.iterdir()] == ["clicks.json"]  # no temporaries left


def test_write_refuses_an_empty_class(tmp_path):
    with pytest.raises(ValueError, match="case 'a' class '1' has no clicks"):
        write_clicks_file(tmp_path / "c.json", {"a": {"1": ClassClicks()}})
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read"),
        ([1, 2], "not a dict"),
        ({}, "lists no cases"),
        ({"a": [[1, 2, 3]]}, "case 'a' must map class"),
        ({"a": {}}, "case 'a' must map class"),
        ({"a": {"1": [[1, 2, 3]]}}, "case 'a' class '1' is a list"),
        ({"a": {"1": {"fg": [1, 2, 3]}}}, "case 'a' class '1': fg point 1 is not a list of 3"),
        ({"a": {"1": {"fg": [[1, 2]]}}}, "case 'a' class '1': fg point .* not a list of 3"),
        ({"a": {"1": {"bg": [[1, 2, 3, 4]]}}}, "class '1': bg point .* not a list of 3"),
        ({"a": {"1": {"fg": [[1, "2", 3]]}}}, "holds '2', not a finite number"),
        ({"a": {"1": {"fg": [[1, True, 3]]}}}, "holds True, not a finite number"),
        ({"a": {"1": {"fg": [[1, None, 3]]}}}, "holds None, not a finite number"),
        ({"a": {"1": {"fg": {"z": 1}}}}, "'fg' is not a list of points"),
        ({"a": {"1": {"box": [1, 2, 3, 4, 5]}}}, "box .* not a list of 6"),
        ({"a": {"1": {"box": [5, 2, 3, 4, 5, 6]}}}, "first corner beyond the second"),
        ({"a": {"1": {"fg": [], "bg": []}}}, "case 'a' class '1' has no clicks and no box"),
        ({"a": {"1": {"points": [[1, 2, 3]]}}}, r"unknown keys \['points'\]"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path, content, match):
    path = _write(tmp_path, content, raw=isinstance(content, str))
    with pytest.raises(DataError, match=match) as info:
        read_clicks_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_is_rejected(tmp_path):
    path = _write(tmp_path, '{"a": {"1": {"fg": [[1, NaN, 3]]}}}', raw=True)
    with pytest.raises(DataError, match="not a finite number"):
        read_clicks_file(path)


def test_two_d_points(tmp_path):
    path = _write(tmp_path, {"a": {"1": {"fg": [[1, 2]], "box": [0, 0, 3, 4]}}})
    assert read_clicks_file(path, ndim=2)["a"]["1"] == ClassClicks(
        fg=((1.0, 2.0),), box=(0.0, 0.0, 3.0, 4.0)
    )
    with pytest.raises(DataError, match="not a list of 3"):
        read_clicks_file(path)


def test_check_in_bounds():
    shape = (4, 5, 6)
    check_in_bounds(ClassClicks(fg=((0, 0, 0), (3, 4, 5)), box=(0, 0, 0, 3, 4, 5)), shape, "w")
    bad = [
        ClassClicks(fg=((4, 0, 0),)),
        ClassClicks(bg=((0, -1, 0),)),
        ClassClicks(fg=((0, 0, 6),)),
        ClassClicks(box=(0, 0, 0, 3, 5, 5)),
        ClassClicks(fg=((1, 1),)),
    ]
    for clicks in bad:
        with pytest.raises(DataError, match=r"case 'x' class '2': .* outside the image"):
            check_in_bounds(clicks, shape, "case 'x' class '2'")
