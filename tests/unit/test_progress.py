"""Progress bars (agen_hf.progress): drawn on the main process, as AGEN_HF_PROGRESS_BARS says."""

import io

import pytest

from agen_hf.progress import ENV, bars_disabled, progress


@pytest.mark.parametrize("value, disable", [("on", False), ("auto", None), ("OFF", True)])
def test_the_setting_picks_tqdm_disable(monkeypatch, value, disable):
    monkeypatch.setenv(ENV, value)
    assert bars_disabled() is disable


def test_default_is_on_and_a_bad_setting_is_named(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert bars_disabled() is False
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ValueError, match="AGEN_HF_PROGRESS_BARS='sometimes'"):
        bars_disabled()


def test_only_the_main_process_draws(monkeypatch):
    monkeypatch.setenv(ENV, "on")
    out = io.StringIO()
    assert list(progress(range(3), desc="work", file=out)) == [0, 1, 2]
    assert "work: 100%" in out.getvalue() and "3/3" in out.getvalue()
    quiet = io.StringIO()
    assert list(progress(range(3), desc="work", main_process=False, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    monkeypatch.setenv(ENV, "auto")  # a StringIO is no terminal
    auto = io.StringIO()
    assert list(progress(range(3), desc="work", file=auto)) == [0, 1, 2]
    assert auto.getvalue() == ""
