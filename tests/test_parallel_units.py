"""The parallel run's units of work (tests/conftest.py): under `make test` (pytest-xdist with
--dist loadgroup) a module's tests carry its unit in their node ids, which is what keeps them in
one worker, so that a module fixture is made once. A pytest or pytest-xdist release that drops
the tag spreads the tests over the workers instead, silently: each worker then makes the module
fixtures again."""
import os

import pytest


@pytest.fixture(scope="module")
def made():
    return []


def _parallel(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") or not config.getvalue("loadgroup"):
        pytest.skip("not a parallel run with --dist loadgroup")


def test_a_module_test_carries_its_unit(request, made):
    _parallel(request.config)
    made.append(os.environ["PYTEST_XDIST_WORKER"])
    assert request.node.nodeid.endswith("@" + request.node.module.__name__), request.node.nodeid


def test_the_next_test_of_the_module_runs_in_the_same_worker(request, made):
    _parallel(request.config)
    assert request.node.nodeid.endswith("@" + request.node.module.__name__), request.node.nodeid
    assert made == [os.environ["PYTEST_XDIST_WORKER"]]  # the first test's fixture, in this worker
