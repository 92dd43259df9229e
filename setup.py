"""Build hook: ship the Julia package inside the wheel.

The repository keeps the Julia package DiffProg at the top level (``julia/``) and
``diffprog/juliapkg.json`` points at it as ``../julia`` (right for a checkout and an
editable install). A wheel has no ``julia/`` beside the Python package, so the build
copies it to ``diffprog/_julia`` and writes a juliapkg.json that points there.

It also builds the optional C extension ``diffprog.engines._fastmath`` (a float64
``sincos`` ufunc for the fusion pass). It is optional in the setuptools sense: where no
C compiler works, the install goes on without it and diffprog computes sin and cos
separately (``diffprog.engines.fastmath.status()`` says which).
Everything else is configured in pyproject.toml.
"""
import json
import os
import shutil

import numpy
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
JULIA_FILES = ("Project.toml", "src", "ext", "test")


class BuildWithJulia(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable installs read julia/ through ../julia in place
        target = os.path.join(self.build_lib, "diffprog", "_julia")
        shutil.rmtree(target, ignore_errors=True)
        for name in JULIA_FILES:
            source = os.path.join(HERE, "julia", name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(target, name))
            elif os.path.exists(source):
                os.makedirs(target, exist_ok=True)
                shutil.copy2(source, os.path.join(target, name))
        manifest = os.path.join(self.build_lib, "diffprog", "juliapkg.json")
        with open(os.path.join(HERE, "diffprog", "juliapkg.json")) as fp:
            spec = json.load(fp)
        spec["packages"]["DiffProg"]["path"] = "_julia"
        with open(manifest, "w") as fp:
            json.dump(spec, fp, indent=2)
            fp.write("\n")


FASTMATH = Extension(
    "diffprog.engines._fastmath",
    sources=["diffprog/engines/_fastmath.c"],
    include_dirs=[numpy.get_include()],
    libraries=["m"] if os.name == "posix" else [],
    optional=True,
)

setup(cmdclass={"build_py": BuildWithJulia}, ext_modules=[FASTMATH])
