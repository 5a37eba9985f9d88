from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

setup(
    name="glasswing",
    python_requires=">=3.11",
    packages=find_packages(include=["dataplane", "dataplane.*", "lab", "lab.*"]) + ["glasswing"],
    package_dir={"glasswing": "cli", "": "."},
    ext_modules=cythonize(
        [Extension("dataplane.relay._pump_c", ["ext/pump.pyx"], include_dirs=["ext"]),
         Extension("dataplane.relay._engine_c",
                   ["ext/engine.pyx", "ext/relay/engine.c", "ext/relay/kernel_mode.c"],
                   include_dirs=["ext", "bpf"], extra_compile_args=["-O2", "-Wall"],
                   # a changed header rebuilds the engine: a gw_kr_state of the old size
                   # would have the map read past it
                   depends=["bpf/kernel_relay.h", "ext/relay/engine.h",
                            "ext/relay/engine_internal.h", "ext/relay/splice_loop.h"])],
        compiler_directives={"language_level": 3},
    ),
    entry_points={"console_scripts": ["glasswing = glasswing.main:main"]},
)
