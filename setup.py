"""The one thing pyproject.toml cannot say: the search files in ``searches/`` ship inside the wheel
as the package ``optispace.searches`` (package data), found by ``optispace.bundled``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["optispace*", "primitives*"]), "optispace.searches"],
    package_dir={"optispace.searches": "searches"},
    package_data={"optispace.searches": ["*.toml"]},
)
