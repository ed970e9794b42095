"""Test configuration: quiet TensorFlow, deterministic hypothesis, shared fixtures. The tests mirror
the package (tests/<subpackage>/ for lhrcnn/<subpackage>/); helpers live in tests/support/."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tests/support/ holds the helpers (NumPy references, fixtures, servers) the tests import by name;
# tests/ itself, for the few helpers a test module shares with others (test_end_to_end's).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=200, deadline=None, database=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ("custom", "tf")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Both op backends. The compiled one must be available: `make install` builds it."""
    from lhrcnn import ops
    if request.param == "custom":
        assert ops.custom_ops_available(), ops.custom_ops_load_error()
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests that train for minutes (still run in CI)")
