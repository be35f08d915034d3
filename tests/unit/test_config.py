"""Configuration: defaults, validation messages, env files, the CLI environment allowlist."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccgate.config import ConfigError, load_settings


def test_config_defaults_match_the_documented_ones() -> None:
    """With no variables set, ccgate serves SQLite on 127.0.0.1:8787 with two CLI slots."""
    settings = load_settings({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8787)
    assert settings.database_url == "sqlite:///./ccgate.db"
    assert settings.concurrency == 2
    assert settings.allow_tools is False
    assert settings.admin_token is None


def test_config_bad_value_names_key_value_and_allowed() -> None:
    """A bad port stops start-up with a message naming the key, the value and the range."""
    with pytest.raises(ConfigError) as info:
        load_settings({"CCGATE_PORT": "eighty"})
    message = str(info.value)
    assert "CCGATE_PORT" in message
    assert "'eighty'" in message
    assert "between 1 and 65535" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CCGATE_CONCURRENCY", "0"),
        ("CCGATE_ALLOW_TOOLS", "maybe"),
        ("CCGATE_DATABASE_URL", "mysql://x"),
        ("CCGATE_JOB_TIMEOUT_SECS", "-1"),
        ("CCGATE_LOG_LEVEL", "loud"),
        ("CCGATE_IDLE_TIMEOUT_SECS", "nan"),
    ],
)
def test_config_rejects_out_of_range_values(key: str, value: str) -> None:
    """Each kind of bad value is refused with its key named."""
    with pytest.raises(ConfigError, match=key):
        load_settings({key: value})


@pytest.mark.parametrize("value", ["5e-324", "0.5", "-1", "inf", "86401"])
def test_config_idle_timeout_is_off_or_at_least_one_second(value: str) -> None:
    """An idle timeout between 0 and 1 second (or past a day) is refused; 0 turns it off."""
    with pytest.raises(ConfigError, match="CCGATE_IDLE_TIMEOUT_SECS"):
        load_settings({"CCGATE_IDLE_TIMEOUT_SECS": value})
    assert load_settings({"CCGATE_IDLE_TIMEOUT_SECS": "0"}).idle_timeout_secs == 0
    assert load_settings({"CCGATE_IDLE_TIMEOUT_SECS": "1"}).idle_timeout_secs == 1


@pytest.mark.parametrize("token", ["x", "admin", "a" * 31], ids=["1", "5", "31"])
def test_config_admin_token_shorter_than_32_characters_stops_start(token: str) -> None:
    """A guessable admin token is a configuration error naming CCGATE_ADMIN_TOKEN and the
    rule, without echoing the token; 32 characters are accepted."""
    with pytest.raises(ConfigError) as info:
        load_settings({"CCGATE_ADMIN_TOKEN": token})
    message = str(info.value)
    assert "CCGATE_ADMIN_TOKEN" in message and "at least 32 characters" in message
    assert f"'{token}'" not in message
    assert load_settings({"CCGATE_ADMIN_TOKEN": "b" * 32}).admin_token == "b" * 32


def test_config_secret_values_are_not_echoed() -> None:
    """A rejected secret-looking setting is not printed back in the error."""
    error = ConfigError("CCGATE_ADMIN_TOKEN", "hunter2", "a secret")
    assert "hunter2" not in str(error)


def test_config_env_file_is_read_and_real_env_wins(tmp_path: Path) -> None:
    """Values come from the env file unless the real environment sets them too."""
    env_file = tmp_path / "ccgate.env"
    env_file.write_text("# comment\nexport CCGATE_PORT=9000\nCCGATE_HOST='0.0.0.0'\n")
    settings = load_settings({"CCGATE_HOST": "127.0.0.2"}, env_file=str(env_file))
    assert settings.port == 9000
    assert settings.host == "127.0.0.2"


def test_config_env_file_from_variable(tmp_path: Path) -> None:
    """CCGATE_ENV_FILE names the env file when no --env-file is given."""
    env_file = tmp_path / "x.env"
    env_file.write_text("CCGATE_CONCURRENCY=5\n")
    assert load_settings({"CCGATE_ENV_FILE": str(env_file)}).concurrency == 5


def test_config_missing_env_file_is_an_error(tmp_path: Path) -> None:
    """An env file that cannot be read stops start-up, naming CCGATE_ENV_FILE."""
    with pytest.raises(ConfigError, match="CCGATE_ENV_FILE"):
        load_settings({}, env_file=str(tmp_path / "nope.env"))


def test_config_cli_env_keeps_only_the_allowlist() -> None:
    """App secrets in ccgate's environment never reach the CLI; its auth and PATH do."""
    settings = load_settings(
        {
            "PATH": "/usr/bin",
            "ANTHROPIC_API_KEY": "sk-x",
            "AWS_SECRET_ACCESS_KEY": "aws",
            "DATABASE_PASSWORD": "pw",
            "CCGATE_ADMIN_TOKEN": "admin-token-0123456789abcdefghijklm",
        }
    )
    assert settings.cli_base_env == {"PATH": "/usr/bin", "ANTHROPIC_API_KEY": "sk-x"}


def test_config_passthrough_extends_the_allowlist() -> None:
    """CCGATE_CLI_ENV_PASSTHROUGH lets an operator pass named extra variables."""
    settings = load_settings({"CCGATE_CLI_ENV_PASSTHROUGH": "MY_VAR", "MY_VAR": "1"})
    assert settings.cli_base_env["MY_VAR"] == "1"


def test_config_unknown_ccgate_keys_are_reported() -> None:
    """A misspelt setting is surfaced instead of silently ignored."""
    settings = load_settings({"CCGATE_CONCURENCY": "4"})
    assert settings.unknown_keys == ("CCGATE_CONCURENCY",)


def test_config_api_backend_needs_an_api_key() -> None:
    """CCGATE_BACKEND=api without ANTHROPIC_API_KEY stops start-up naming the missing key."""
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY") as info:
        load_settings({"CCGATE_BACKEND": "api"})
    assert "CCGATE_BACKEND=api" in str(info.value)
    assert load_settings({"CCGATE_BACKEND": "api", "ANTHROPIC_API_KEY": "sk-x"}).backend == "api"
