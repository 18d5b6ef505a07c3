"""The package's compiled part: the fast path's CPU kernels (optional: without a compiler the library
falls back to oneDNN, see xception/fast/native.py). Everything else is in pyproject.toml."""

import glob

from setuptools import Extension, setup

CSRC = "src/xception/fast/csrc"

setup(
    ext_modules=[
        Extension(
            "xception.fast._cpu",
            sources=[f"{CSRC}/module.cpp", f"{CSRC}/kernels_avx2.cpp", f"{CSRC}/kernels_avx512.cpp",
                     f"{CSRC}/kernels_avx512_bf16.cpp",
                     f"{CSRC}/qkernels_avx2.cpp", f"{CSRC}/qkernels_avx2_s7.cpp",
                     f"{CSRC}/qkernels_avx512_vnni.cpp", f"{CSRC}/qkernels_avx2_s7a7.cpp"],
            depends=sorted(glob.glob(f"{CSRC}/*.h")),  # every header: an edit to any rebuilds the module
            include_dirs=[CSRC],
            extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-fvisibility=hidden",
                                "-ffp-contract=off"],
            language="c++",
            optional=True,
        )
    ]
)
