import pytest

from actors.domain.durations import effective_cap_s, validate_requested_duration
from jitgate.errors import InvalidInput


@pytest.mark.parametrize("value", [0, -5, 43_201, "abc", 1.5, True, None])
def test_invalid_duration_names_field(value):
    with pytest.raises(InvalidInput) as raised:
        validate_requested_duration(value, 43_200)
    assert raised.value.details["field"] == "duration_s"
    assert "duration_s" in str(raised.value)


def test_over_global_maximum_names_limit():
    with pytest.raises(InvalidInput) as raised:
        validate_requested_duration(50_000, 43_200)
    assert raised.value.details["limit"] == 43_200


def test_valid_duration_passes():
    assert validate_requested_duration(3600, 43_200) == 3600


def test_smallest_cap_applies():
    assert effective_cap_s(3600, None, 900, 43_200) == 900
