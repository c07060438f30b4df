"""Build: the Python package plus the C++ text ops (`convirt_fast._C`), compiled by CMake.

Build switches (environment variables, read here):
  CONVIRT_BUILD_TYPE   CMake build type for the extension: Release (default), Debug, RelWithDebInfo.
  CONVIRT_NATIVE       1 to compile with -march=native (faster, not portable); default 0.
  CONVIRT_JOBS         parallel compile jobs; default: all cores.
  CMAKE_ARGS           extra arguments passed to CMake verbatim (as in pybind11's cmake_example).
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path = ROOT):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt's `_C` target with Ninja, into the extension's path."""

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = os.environ.get("CONVIRT_BUILD_TYPE", "Release")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCONVIRT_NATIVE={'ON' if os.environ.get('CONVIRT_NATIVE') == '1' else 'OFF'}",
            "-DCONVIRT_BUILD_TESTS=OFF",
            "-G",
            "Ninja",
        ]
        cmake_args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        jobs = os.environ.get("CONVIRT_JOBS", str(os.cpu_count() or 1))
        build_dir = Path(self.build_temp) / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.source_dir, *cmake_args], cwd=build_dir, check=True)
        subprocess.run(
            ["cmake", "--build", ".", "--target", "_C", "-j", jobs], cwd=build_dir, check=True
        )


setup(
    ext_modules=[CMakeExtension("convirt_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
