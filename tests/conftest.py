"""Test configuration: quiet TensorFlow, deterministic hypothesis, shared fixtures. The tests mirror
the package (tests/<subpackage>/ for lhrcnn/<subpackage>/); helpers live in tests/support/."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _share_the_cores():
    """In a parallel run (pytest-xdist), each worker, and the scripts its tests start (training,
    evaluation, export), gets its share of the cores for TensorFlow's intra-op pool: two
    trainings side by side on 2 cores, each with a 2-thread pool, spent 11-14% more CPU than with
    one thread each (threads that wait for each other across processes). The kernels'
    multi-threaded paths stay covered: tests/ops/test_ops_determinism.py runs the ops with 1 and
    2 threads in processes of their own and requires the same bits."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > 1 and "TF_NUM_INTRAOP_THREADS" not in os.environ:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(max(1, cores // workers))


_share_the_cores()
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
    config.addinivalue_line("markers", "slow(seconds=N): end-to-end tests that train for minutes (still run in "
                            "CI); N, about how long one takes on 2 cores, orders the parallel run")
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one pytest-xdist worker")


def _uses_a_module_fixture(item):
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(fixturedefs and fixturedefs[-1].scope == "module" for fixturedefs in defs.values())


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Units of work for parallel runs (`make test` runs pytest-xdist with --dist loadgroup). A unit
    runs in one worker, in file order: the tests of a module, sharing its module fixtures, except a
    slow test that uses no module fixture, which is a unit of its own; a module that shares costly
    material otherwise (a module-level cache) names its own `xdist_group`. Units run costliest first
    (the sum of their `slow` marks' `seconds`, a scheduling hint that nothing checks), so that no
    long test starts last. Without xdist only the order changes. A hook wrapper: the marks must be
    on the items before pytest-xdist's own hook reads them into the node ids."""
    units = {}
    for index, item in enumerate(items):
        mark = item.get_closest_marker("slow")
        group = item.get_closest_marker("xdist_group")
        if group is not None:
            unit = group.args[0] if group.args else group.kwargs.get("name", "default")
        elif mark and not _uses_a_module_fixture(item):
            unit = item.nodeid
        else:
            unit = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(unit))
        first, cost = units.get(unit, (index, 0))
        units[unit] = (first, cost + (mark.kwargs.get("seconds", 1) if mark else 0))
        item.stash[_UNIT] = unit
    items.sort(key=lambda item: (-units[item.stash[_UNIT]][1], units[item.stash[_UNIT]][0]))
    return (yield)


_UNIT = pytest.StashKey[str]()
