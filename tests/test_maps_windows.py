"""Window arithmetic of `mav maps` on its edge cases."""

import pytest

from openmav.errors import InputError
from openmav.maps.windows import check_window, window_spans, windows_for


def test_shorter_than_window_is_one_image():
    wins = windows_for(10, 32, 5)
    assert [(w.start, w.end) for w in wins] == [(0, 10)]
    assert wins[0].filename(3) == "attn_3.png"


def test_equal_to_window_is_one_image():
    assert window_spans(32, 32, 5) == [(0, 32)]
    assert windows_for(32, 32, 5)[0].single


def test_original_example_42_keys():
    wins = windows_for(42, 32, 5)
    assert [(w.start, w.end) for w in wins] == [(0, 32), (5, 37), (10, 42)]
    assert [w.filename(10) for w in wins] == ["attn_10_0.png", "attn_10_1.png", "attn_10_2.png"]


def test_stride_not_dividing_length_snaps_last_window():
    assert window_spans(40, 32, 5) == [(0, 32), (5, 37), (8, 40)]
    assert window_spans(33, 32, 5) == [(0, 32), (1, 33)]
    assert window_spans(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_spans(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]


@pytest.mark.parametrize("seq,window,stride", [(1, 1, 1), (7, 3, 2), (100, 32, 5), (64, 32, 32), (65, 32, 31)])
def test_every_key_covered_and_windows_full(seq, window, stride):
    spans = window_spans(seq, window, stride)
    covered = set()
    for a, b in spans:
        assert b - a == min(window, seq) and 0 <= a < b <= seq
        covered.update(range(a, b))
    assert covered == set(range(seq))
    assert spans[-1][1] == seq
    assert [a for a, _ in spans] == sorted({a for a, _ in spans})  # no duplicates, in order


def test_bad_windows():
    with pytest.raises(InputError, match="window"):
        check_window(0, 5)
    with pytest.raises(InputError, match="context"):
        check_window(600, 5, context_length=512)
    with pytest.raises(InputError, match="stride"):
        check_window(32, 0)
    with pytest.raises(InputError, match="skipped"):
        check_window(4, 5)
