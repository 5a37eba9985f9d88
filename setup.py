from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="glasswing",
    python_requires=">=3.11",
    packages=["dataplane", "dataplane.proto", "glasswing"],
    package_dir={"glasswing": "cli", "": "."},
    ext_modules=cythonize(
        [Extension("dataplane._pump_c", ["ext/pump.pyx"], include_dirs=["ext"]),
         Extension("dataplane._engine_c", ["ext/engine.pyx", "ext/relay/engine.c"],
                   include_dirs=["ext"], extra_compile_args=["-O2", "-Wall"])],
        compiler_directives={"language_level": 3},
    ),
    entry_points={"console_scripts": ["glasswing = glasswing.main:main"]},
)
