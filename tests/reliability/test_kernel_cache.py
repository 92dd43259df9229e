"""The compiled-kernel disk cache loads only code it built (diffprog/engines/ckernel.py,
docs/threat-model.md): a cache directory is used only when it is private (owned by this
user, writable by no one else, not a symbolic link); a library is loaded only when its
bytes match the sha256 recorded at build time and it carries its kernel's marker; a bad
one is rebuilt with a warning, never a crash. Background builds never delay exit.

Whatever could crash the interpreter runs in a subprocess, so a crash is a failure here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

from diffprog.engines import ckernel
from diffprog.errors import DiffprogWarning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_cc = pytest.mark.skipif(ckernel.compiler() is None or not ckernel.enabled(),
                              reason="no C compiler here (compiled kernels off)")

# Two programs whose gradients are one fused block each, spelled with the arithmetic core
# the probe accepts everywhere; prints the cache's files after each and the results.
PROGRAMS = r"""
import json, os, sys
import numpy as np
import diffprog as dp
from diffprog.engines import ckernel
x = np.random.default_rng(0).uniform(0.5, 2.0, 60000)
def a(x): return np.sum(np.sqrt(x * x + 1.0) * x)
def b(x): return np.sum(np.abs(x - 0.25) / (x + 3.0))
out = {}
ckernel.probe()
out["probe"] = sorted(os.listdir(ckernel.cache_dir()))
for name in sys.argv[1:]:
    f = {"a": a, "b": b}[name]
    dp.grad(f)(x)
    ckernel.wait()
    out[name + "_grad"] = dp.grad(f)(x).tobytes().hex()
    out[name] = sorted(os.listdir(ckernel.cache_dir()))
out["states"] = [k.state for k in ckernel.kernels()]
out["runs"] = [k.runs for k in ckernel.kernels()]
print(json.dumps(out))
"""


def _env(cache, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFPROG_")}
    env.update(DIFFPROG_CACHE_DIR=str(cache), DIFFPROG_FUSE_MIN="1000", **extra)
    return env


def _python(code, env, *args, timeout=60):
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _programs(cache, *names):
    done = _python(PROGRAMS, _env(cache), *names)
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache holding the probe library and kernels a and b, and what the programs gave."""
    if ckernel.compiler() is None or not ckernel.enabled():
        pytest.skip("no C compiler here (compiled kernels off)")
    cache = tmp_path_factory.mktemp("built")
    out, _ = _programs(cache, "a", "b")
    assert out["states"] == ["ready", "ready"], out["states"]
    lib = {"probe": [f for f in out["probe"] if f.endswith(".so")]}
    lib["a"] = [f for f in out["a"] if f.endswith(".so") and f not in lib["probe"]]
    lib["b"] = [f for f in out["b"] if f.endswith(".so") and f not in out["a"]]
    assert all(len(v) == 1 for v in lib.values()), lib
    return cache, {k: v[0] for k, v in lib.items()}, out


def _copy(built, tmp_path):
    """A fresh copy of the built cache (mode 0700, ours), and its ckernels folder."""
    cache = tmp_path / "cache"
    shutil.copytree(built[0], cache)
    return cache, cache / "ckernels"


def _digest(path):
    return str(path)[:-len(".so")] + ".sha256"


def _copy_digest(src, dst):
    if os.path.exists(_digest(src)):  # (a cache from before digests has none)
        shutil.copyfile(_digest(src), _digest(dst))


def _run_and_check(built, cache, why):
    """Run the programs on the tampered cache: no crash, the same results from compiled
    kernels, and one warning naming the library and why it was rebuilt."""
    out, stderr = _programs(cache, "a", "b")
    assert out["states"] == ["ready", "ready"], out["states"]
    assert out["runs"] == [1, 1]
    assert out["a_grad"] == built[2]["a_grad"] and out["b_grad"] == built[2]["b_grad"]
    warned = [line for line in stderr.splitlines() if "DiffprogWarning" in line]
    assert len(warned) == 1 and built[1]["a"] in warned[0] and why in warned[0], stderr
    assert "building it again" in warned[0]
    a = cache / "ckernels" / built[1]["a"]
    assert not a.is_symlink()
    assert a.read_bytes() == (built[0] / "ckernels" / built[1]["a"]).read_bytes()
    return out


# ---------------------------------------------------------------- verifying libraries

@needs_cc
def test_a_truncated_library_is_rebuilt_not_a_crash(built, tmp_path):
    cache, lib = _copy(built, tmp_path)
    path = lib / built[1]["a"]
    os.truncate(path, path.stat().st_size // 5)  # SIGBUS in dlopen before the digest
    _run_and_check(built, cache, "does not match the sha256 recorded")


@needs_cc
def test_another_kernels_library_copied_over_is_rebuilt(built, tmp_path):
    cache, lib = _copy(built, tmp_path)
    shutil.copyfile(lib / built[1]["b"], lib / built[1]["a"])  # SIGSEGV when a's block ran b's code
    _run_and_check(built, cache, "does not match the sha256 recorded")


@needs_cc
def test_another_kernels_library_and_digest_copied_over_fail_the_marker(built, tmp_path):
    cache, lib = _copy(built, tmp_path)
    shutil.copyfile(lib / built[1]["b"], lib / built[1]["a"])
    _copy_digest(lib / built[1]["b"], lib / built[1]["a"])
    _run_and_check(built, cache, "another kernel's library")


@needs_cc
def test_a_symlinked_library_is_refused(built, tmp_path):
    cache, lib = _copy(built, tmp_path)
    os.unlink(lib / built[1]["a"])
    os.symlink(lib / built[1]["b"], lib / built[1]["a"])
    _copy_digest(lib / built[1]["b"], lib / built[1]["a"])
    _run_and_check(built, cache, "is a symbolic link")
    assert (lib / built[1]["b"]).exists()  # the link was removed, not what it pointed to


@needs_cc
def test_a_library_without_its_recorded_digest_is_rebuilt(built, tmp_path):
    cache, lib = _copy(built, tmp_path)
    os.unlink(_digest(lib / built[1]["a"]))
    _run_and_check(built, cache, ".sha256 is missing")


@needs_cc
def test_libraries_load_from_a_private_copy():
    """dlopen never opens the cache's file by path: it could be swapped after the check."""
    source = "int dp_copy_probe(void) { return 7; }\n"
    lib = ckernel.library(source, ["dp_copy_probe"])
    assert lib._name != ckernel.build(source) and lib.dp_copy_probe() == 7
    assert ckernel.library(source, ["dp_copy_probe"]) is lib  # verified again, loaded once


# ---------------------------------------------------------------- the cache directory

@pytest.fixture
def settings(monkeypatch, tmp_path):
    """No cache settings from outside; the temporary directory is tmp_path/tmp."""
    for name in ("DIFFPROG_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _cache_dir_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = ckernel.cache_dir()
    return path, [str(w.message) for w in caught if issubclass(w.category, DiffprogWarning)]


def _assert_private(path):
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0


def test_a_new_cache_dir_is_made_private(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "mine"))
    path, warned = _cache_dir_warns()
    assert path == str(tmp_path / "mine" / "ckernels") and not warned
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_cache_dir_writable_by_others_is_refused(settings, monkeypatch, tmp_path):
    planted = tmp_path / "shared" / "ckernels"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "shared"))
    path, warned = _cache_dir_warns()
    assert path != str(planted)
    _assert_private(path)
    assert len(warned) == 1 and str(planted) in warned[0] and "mode 0777" in warned[0]


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user owns needs root")
def test_a_cache_dir_owned_by_another_user_is_refused(settings, monkeypatch, tmp_path):
    planted = tmp_path / "theirs" / "ckernels"
    planted.mkdir(parents=True, mode=0o700)
    os.chown(planted, 54321, 54321)
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "theirs"))
    path, warned = _cache_dir_warns()
    assert path != str(planted)
    _assert_private(path)
    assert len(warned) == 1 and "owned by uid 54321" in warned[0]


def test_a_planted_per_user_folder_in_tmp_is_refused(settings, monkeypatch, tmp_path):
    """The case of the report: no usable configured cache (here a path under a file), so
    the per-user folder in the temporary directory, which another user created first."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    planted = settings / f"diffprog-ckernels-{os.getuid()}"
    planted.mkdir(mode=0o700)
    planted.chmod(0o1777)
    if os.getuid() == 0:
        os.chown(planted, 54321, 54321)
    path, warned = _cache_dir_warns()
    assert path != str(planted)
    _assert_private(path)
    assert len(warned) == 1 and str(planted) in warned[0]


def test_a_symlinked_cache_dir_is_refused(settings, monkeypatch, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "linked").mkdir()
    os.symlink(real, tmp_path / "linked" / "ckernels")
    monkeypatch.setenv("DIFFPROG_CACHE_DIR", str(tmp_path / "linked"))
    path, warned = _cache_dir_warns()
    assert path not in (str(real), str(tmp_path / "linked" / "ckernels"))
    _assert_private(path)
    assert len(warned) == 1 and "symbolic link" in warned[0]


def test_without_a_home_no_tilde_folder_is_made(settings, monkeypatch, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # no HOME and no passwd entry
    path, warned = _cache_dir_warns()
    assert os.listdir(work) == []
    assert path == str(settings / f"diffprog-ckernels-{os.getuid()}") and not warned
    _assert_private(path)


def test_a_relative_xdg_cache_home_is_ignored(settings, monkeypatch, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path, _ = _cache_dir_warns()
    assert os.listdir(work) == []
    assert path == str(tmp_path / "home" / ".cache" / "diffprog" / "ckernels")


FALLBACK = r"""
import os
from diffprog.engines import ckernel
path = ckernel.cache_dir()
open(os.path.join(path, "made-here"), "w").close()
print(path)
"""


def test_the_process_own_fallback_folder_is_removed_at_exit(tmp_path):
    planted = tmp_path / "shared" / "ckernels"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = _python(FALLBACK, _env(tmp_path / "shared", TMPDIR=str(tmp)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp))
    assert "DiffprogWarning" in done.stderr and "mode 0777" in done.stderr
    assert os.listdir(tmp) == [] and os.listdir(planted) == []


# ---------------------------------------------------------------- exit and fork

def _slow_compiler(tmp_path, seconds, pids=None):
    real = ckernel.compiler()
    path = tmp_path / "slowcc"
    record = f'echo $$ >> "{pids}"; ' if pids else ""
    path.write_text(f'#!/bin/sh\n{record}case "$1" in --version) ;; *) sleep {seconds};; esac\n'
                    f'exec "{real}" "$@"\n')
    path.chmod(0o700)
    return str(path)


EXIT = r"""
import sys, time
import numpy as np
import diffprog as dp
x = np.random.default_rng(0).uniform(0.5, 2.0, 60000)
for k in range(int(sys.argv[1])):  # a new kernel each: compiles queue up behind the first
    ns = {"np": np}
    exec(f"def f(x):\n    return np.sum(np.sqrt(x * x + {k}.5) * x)\n", ns)
    dp.grad(ns["f"])(x)
time.sleep(0.5)  # the compiler is running now
print(time.time(), flush=True)
if len(sys.argv) > 2:
    time.sleep(60)  # until interrupted
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fp:
            return fp.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@needs_cc
def test_exit_does_not_wait_for_queued_or_running_compiles(built, tmp_path):
    cache, lib = _copy(built, tmp_path)  # the probe library is cached: kernels compile
    pids, tmp = tmp_path / "pids", tmp_path / "tmp"
    tmp.mkdir()
    env = _env(cache, CC=_slow_compiler(tmp_path, 30, pids), TMPDIR=str(tmp))
    done = _python(EXIT, env, "8", timeout=20)
    ended = time.time()
    assert done.returncode == 0, done.stderr
    assert ended - float(done.stdout.split()[-1]) < 2.0
    assert sorted(os.listdir(lib)) == sorted(os.listdir(built[0] / "ckernels"))  # no build-*
    assert os.listdir(tmp) == []
    started = [int(p) for p in pids.read_text().split()]
    assert started and not [p for p in started if _alive(p)]


@needs_cc
def test_one_ctrl_c_is_enough(built, tmp_path):
    cache, _ = _copy(built, tmp_path)
    env = _env(cache, CC=_slow_compiler(tmp_path, 30))
    proc = subprocess.Popen([sys.executable, "-c", EXIT, "3", "wait"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        proc.wait(timeout=10)
        assert time.time() - sent < 2.0
        assert "KeyboardInterrupt" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


FORK = r"""
import os, sys
import numpy as np
import diffprog as dp
from diffprog.engines import ckernel
x = np.random.default_rng(0).uniform(0.5, 2.0, 60000)
f = lambda x: np.sum(np.sqrt(x * x + 7.5) * x)
dp.grad(f)(x)  # its kernel is compiling (for a second) while we fork
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the child's exit hook must leave the parent's build alone
os.waitpid(pid, 0)
ckernel.wait(timeout=60)
print(ckernel.kernels()[-1].state)
"""


@needs_cc
def test_a_forked_child_exiting_leaves_the_parents_build_alone(built, tmp_path):
    cache, _ = _copy(built, tmp_path)
    done = _python(FORK, _env(cache, CC=_slow_compiler(tmp_path, 1)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ready"], done.stderr
