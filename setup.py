"""Build the native extension `minillm._C` from csrc/ (every .cpp in it and its subfolders).

-O3 everywhere; the AVX2/FMA, AVX-512 and VNNI code paths are compiled per
function with `__attribute__((target(...)))` and chosen at run time (csrc/simd.h),
so one build runs on any x86-64 (and on ARM, where only the portable scalar path
is compiled). OpenMP is
used when the compiler supports it; otherwise the build goes on without it and
`minillm.build_info()` says so. The sources compile in parallel (MINILLM_BUILD_JOBS sets how
many at once; the default is one per CPU).
"""
import os
import sys
import tempfile

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup


def compiler_accepts(compiler, flag):
    """True if the compiler builds and links a tiny OpenMP-free program with `flag`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        openmp = False
        if sys.platform != "win32" and os.environ.get("MINILLM_NO_OPENMP") != "1":
            openmp = compiler_accepts(self.compiler, "-fopenmp")
        for ext in self.extensions:
            if sys.platform == "win32":
                ext.extra_compile_args += ["/O2"]
            else:
                ext.extra_compile_args += ["-O3", "-fno-math-errno"]
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
                ext.define_macros.append(("MINILLM_OPENMP", "1"))
        print(f"minillm: building with OpenMP: {openmp}")
        super().build_extensions()


def headers(root):
    """Every header and included fragment under root: a change to one rebuilds the extension."""
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if f.endswith((".h", ".inc"))]
    return sorted(p.replace(os.sep, "/") for p in found)


def cpp_sources(root):
    """Every .cpp under root, as sorted relative paths (the same list, in the same order, everywhere)."""
    found = []
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, f) for f in files if f.endswith(".cpp")]
    return sorted(p.replace(os.sep, "/") for p in found)


ParallelCompile("MINILLM_BUILD_JOBS").install()
sources = cpp_sources("csrc")
ext = Pybind11Extension("minillm._C", sources, include_dirs=["csrc"], depends=headers("csrc"), cxx_std=17)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
