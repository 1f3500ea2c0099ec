"""Settings checks: ports against the local Ray head's worker port range, and invalid values."""

import pytest
from pydantic import ValidationError

from cluster.settings import Settings


def test_http_port_in_worker_range_rejected(tmp_path):
    with pytest.raises(ValidationError) as error:
        Settings(state_dir=tmp_path, http_port=10005)
    assert "http_port" in str(error.value)
    assert "10002-19999" in str(error.value)


def test_dashboard_port_in_worker_range_rejected(tmp_path):
    with pytest.raises(ValidationError) as error:
        Settings(state_dir=tmp_path, dashboard_port=18556)
    assert "dashboard_port" in str(error.value)


def test_disabled_dashboard_port_not_checked(tmp_path):
    settings = Settings(state_dir=tmp_path, dashboard=False, dashboard_port=18556)
    assert settings.dashboard_port == 18556


def test_external_ray_cluster_ports_not_checked(tmp_path):
    settings = Settings(state_dir=tmp_path, ray_address="127.0.0.1:6379", http_port=10005)
    assert settings.http_port == 10005


def test_bool_setting_error_lists_values(monkeypatch):
    from jitgate.cli._server_commands import _settings
    from jitgate.errors import InvalidInput

    monkeypatch.setenv("JITGATE_ACTOR_CHANNELS", "maybe")
    with pytest.raises(InvalidInput) as raised:
        _settings()
    assert "JITGATE_ACTOR_CHANNELS" in raised.value.message
    assert "use true or false" in raised.value.message
    assert raised.value.details["value"] == "maybe"
