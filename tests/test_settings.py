from pathlib import Path

import pytest

from app.auth import Scope, parse_api_keys
from app.settings import ConfigError, load_settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_environment_prefix_and_redis_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTIVE_BATCH_SIZE", "8")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    settings = load_settings()
    assert settings.batch_size == 8
    assert settings.redis_url == "redis://example:6379/0"


def test_explicit_override_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTIVE_REDIS_URL", "redis://from-env:6379/0")
    assert load_settings(redis_url="redis://flag:6379/0").redis_url == "redis://flag:6379/0"


def test_api_keys_carry_scopes_and_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTIVE_API_KEYS", "alpha:predict,feedback; beta:admin")
    keys = parse_api_keys(load_settings().api_keys.get_secret_value())
    assert keys["alpha"] == {Scope.PREDICT, Scope.FEEDBACK}
    assert keys["beta"] == set(Scope)
    assert "alpha" not in repr(load_settings())
    monkeypatch.setenv("RETENTIVE_API_KEYS", "alpha:root")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "scopes are predict, feedback, admin" in str(err.value) and "alpha" not in str(err.value)


def test_a_key_file_adds_keys_and_a_bad_one_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RETENTIVE_API_KEYS", "alpha:predict")
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nbeta:admin  # on call\n\ngamma:feedback\n")
    keys = parse_api_keys(load_settings(api_keys_file=key_file).api_key_entries())
    assert keys == {"alpha": {Scope.PREDICT}, "beta": set(Scope), "gamma": {Scope.FEEDBACK}}
    key_file.write_text("delta\n")
    with pytest.raises(ConfigError, match="RETENTIVE_API_KEYS_FILE: entry 1 must look like") as err:
        load_settings(api_keys_file=key_file)
    assert "delta" not in str(err.value)
    with pytest.raises(ConfigError, match="RETENTIVE_API_KEYS_FILE: cannot read the key file"):
        load_settings(api_keys_file=tmp_path / "missing")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"batch_size": -1}, "RETENTIVE_BATCH_SIZE"),
        ({"model": "/no/such/model"}, "RETENTIVE_MODEL"),
        ({"quantile": 1.5}, "RETENTIVE_QUANTILE"),
        ({"strategy": "magic"}, "RETENTIVE_STRATEGY"),
        ({"key_prefix": "a b"}, "RETENTIVE_KEY_PREFIX"),
    ],
)
def test_bad_value_names_the_setting(override: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**override)
    assert str(err.value).startswith(f"{named}: ")
    assert "\n" not in str(err.value)


def test_readme_configuration_matches_the_settings() -> None:
    assert settings_table() in README.read_text(), "regenerate with: python -m app.settings"


def test_a_setting_under_its_old_name_is_refused_with_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETENTIVE_MIGU_QUANTILE", "0.5")
    with pytest.raises(ConfigError, match="RETENTIVE_MIGU_QUANTILE is now RETENTIVE_QUANTILE"):
        load_settings()


def test_a_mixing_window_smaller_than_a_micro_batch_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"RETENTIVE_MIX_WINDOW: 8 is smaller than RETENTIVE_BATCH_SIZE \(16\)"
    ):
        load_settings(mix_window=8, batch_size=16)
    assert load_settings(mix_window=0).loop_config().window == 16
    assert load_settings(mix_window=256).loop_config().window == 256


def test_the_largest_step_holds_a_micro_batch_and_grows_only_with_a_backlog() -> None:
    with pytest.raises(
        ConfigError, match=r"RETENTIVE_MAX_BATCH_SIZE: 8 is smaller than RETENTIVE_BATCH_SIZE \(16\)"
    ):
        load_settings(max_batch_size=8, batch_size=16)
    adaptive = load_settings(max_batch_size=64).loop_config()
    assert adaptive.window == 64
    assert [adaptive.micro_batch(waiting) for waiting in (1, 16, 40, 64, 500)] == [16, 16, 40, 64, 64]
    fixed = load_settings(max_batch_size=0, mix_window=256).loop_config()
    assert [fixed.micro_batch(waiting) for waiting in (1, 40, 256)] == [16, 16, 16]


def test_the_precision_reaches_the_learner_and_an_unknown_one_is_refused_with_the_choices() -> None:
    assert load_settings(precision="bf16").learner_config().precision == "bf16"
    with pytest.raises(
        ConfigError, match=r"RETENTIVE_PRECISION: Input should be 'auto', 'fp32' or 'bf16' \(got 'fp16'\)"
    ):
        load_settings(precision="fp16")
