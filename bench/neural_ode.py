"""Time the training loop of notebooks/03-neural-ode, as the notebook runs it.

The cells are read from notebooks/build.py (the notebook's source), so this times what
the notebook runs: its setup cells, then the Adam loop (400 value-and-gradient steps of
an odeint over an MLP vector field), timed from its first line to its last. The
compiled loops build in the background while the first steps run in Python, so the
time depends on what the disk cache holds (``--cache``): "warm", the usual cache (a
second run of the notebook); "fresh", a new cache holding only the library that probes
the C spellings, built once per machine (a first run of this notebook); "empty", a new
empty cache (diffprog's first compile on a machine).

    python -m bench.neural_ode                   # as a second run of the notebook finds it
    python -m bench.neural_ode --cache fresh     # as its first run finds it

Results do not depend on it: the loss history (its digest is printed) is the same bits
with or without compiled loops.
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time


def cells() -> list[str]:
    path = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "build.py"
    spec = importlib.util.spec_from_file_location("_notebooks_build", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return [c for c in build.NOTEBOOKS["03-neural-ode"] if not isinstance(c, build.Md)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", choices=("warm", "fresh", "empty"), default="warm",
                    help="what the kernel cache holds when the loop starts (see above)")
    a = ap.parse_args(argv)
    if a.cache != "warm":  # before diffprog is imported (the setup cell imports it)
        cache = tempfile.mkdtemp(prefix="diffprog-bench-cache-")
        atexit.register(shutil.rmtree, cache, True)
        os.environ["DIFFPROG_CACHE_DIR"] = cache
        if a.cache == "fresh":
            subprocess.run([sys.executable, "-c", "from diffprog.engines import ckernel; "
                            "ckernel.probe()"], check=True)
    setup, model, training = cells()[:3]
    namespace: dict = {}
    exec(compile(setup, "<setup cell>", "exec"), namespace)  # noqa: S102 - our notebook
    exec(compile(model, "<model cell>", "exec"), namespace)  # noqa: S102
    cpu = time.process_time()
    start = time.perf_counter()
    exec(compile(training, "<training cell>", "exec"), namespace)  # noqa: S102
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    history = namespace["history"]
    digest = hashlib.sha256(repr(history).encode()).hexdigest()[:12]
    print(f"training loop: {seconds:.3f} s for {len(history)} steps "
          f"({1e3 * seconds / len(history):.2f} ms/step; this process's CPU time {cpu:.3f} s, "
          f"the compiler's not counted); loss history digest {digest}")
    try:
        from diffprog.engines import ckernel, cscan
        runs = [k.runs for k in ckernel.kernels() if isinstance(k, cscan.ScanKernel) and k.runs]
        print(f"compiled scan loops: {len(runs)} used, {sum(runs)} calls")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
