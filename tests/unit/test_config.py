from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import CommaList, Settings


def test_defaults_match_the_readme() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.host, s.port, s.device, s.log_level) == ("127.0.0.1", 8000, "cpu", "info")
    assert s.model_dir == Path("models/all-MiniLM-L6-v2")
    assert (s.intra_op_threads, s.max_inputs, s.max_input_chars) == (0, 2048, 100_000)
    assert s.max_body_bytes == 4_194_304


def test_environment_variables_use_the_embed_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_PORT", "9001")
    monkeypatch.setenv("EMBED_DEVICE", "auto")
    s = Settings()
    assert (s.port, s.device) == (9001, "auto")


def test_an_unknown_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()


def test_list_settings_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class WithList(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="EMBED_")
        things: CommaList = []

    monkeypatch.setenv("EMBED_THINGS", "a, b,,c")
    assert WithList().things == ["a", "b", "c"]


def test_a_request_limit_over_the_queue_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBED_MAX_REQUEST_TOKENS", "70000")
    with pytest.raises(ValidationError, match="EMBED_MAX_QUEUE_TOKENS=65536"):
        Settings()


def test_python_m_app_names_a_bad_setting_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.__main__ import main

    monkeypatch.setenv("EMBED_MAX_REQUEST_TOKENS", "70000")
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "EMBED_MAX_REQUEST_TOKENS=70000 is more than EMBED_MAX_QUEUE_TOKENS" in err


def test_a_smaller_queue_alone_lowers_the_request_limit_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBED_MAX_QUEUE_TOKENS", "300")
    assert Settings().max_request_tokens == 300
    monkeypatch.delenv("EMBED_MAX_QUEUE_TOKENS")
    assert Settings().max_request_tokens == 32768
