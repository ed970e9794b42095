"""The benchmarks' timing helpers: the garbage collector is off while calls are timed and
restored afterwards, and every implementation is called the same number of times."""
import gc

from benchmarks import timing


def test_calls_are_timed_with_the_collector_off_and_it_is_restored():
    seen = []
    assert gc.isenabled()
    timing.median_seconds(lambda: seen.append(gc.isenabled()), warmup=2, repeats=5)
    assert seen[:2] == [True, True]  # warm-up calls run as usual
    assert seen[2:] == [False] * 5
    assert gc.isenabled()


def test_interleaved_medians_times_every_function_alike():
    calls = {"a": [], "b": []}
    medians = timing.interleaved_medians({name: (lambda n=name: calls[n].append(gc.isenabled()))
                                          for name in calls}, warmup=1, repeats=4)
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())
    assert calls["a"] == calls["b"] == [True] + [False] * 4
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        timing.median_seconds(lambda: None, warmup=0, repeats=2)
        assert not gc.isenabled()
    finally:
        gc.enable()
