import pytest

from prefrec.paths import shared_data_dir

SHARED = shared_data_dir()


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test with a clear reason when it is absent."""
    if SHARED is None:
        pytest.skip("../shared/data is absent (the offline dataset copies live beside the repository in CI)")
    return SHARED
