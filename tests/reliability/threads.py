"""Running a test's work on several threads at once (shared by the reliability tests)."""
from __future__ import annotations

import threading


def in_threads(n: int, target, barrier: bool = False, timeout: float = 60.0) -> list:
    """``target(i)`` for i in range(n), each on its own thread (started together behind a
    barrier if asked); the results in order. The first exception of any thread is raised
    here, and a thread still running after ``timeout`` seconds fails the test."""
    errors, results = [], [None] * n
    start = threading.Barrier(n) if barrier else None

    def run(i):
        try:
            if start is not None:
                start.wait()
            results[i] = target(i)
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results
