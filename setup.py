"""Package discovery and package data (the rest is pyproject.toml).

An installed wheel must carry every file the service reads at run time: the static
pages under ``app/``, and the model catalog (``models/manifests``, ``models/packs``),
which lives at the repository root beside its README and licences. Only here can
setuptools map a folder outside the packages into one (pyproject's ``packages.find``
cannot add a mapped package): the wheel holds ``models/`` as ``app/_catalog``, where
``app.inference.catalog.default_catalog_dir()`` looks first.
"""

from setuptools import find_namespace_packages, setup

CATALOG = "app._catalog"  # app.inference.catalog.PACKAGED_CATALOG

setup(
    packages=[
        *find_namespace_packages(include=["app*", "training*"], exclude=["*.__pycache__"]),
        CATALOG,
        f"{CATALOG}.manifests",
        f"{CATALOG}.packs",
    ],
    package_dir={CATALOG: "models"},
    package_data={
        "app.static": ["*"],  # the live-stream demo page, served at /static
        # PostgreSQL schema migrations, applied at start-up (app/storage/postgres/migrations.py)
        "app.storage.postgres.migrations": ["*.sql"],
        CATALOG: ["README.md"],
        f"{CATALOG}.manifests": ["*.json"],
        f"{CATALOG}.packs": ["*.json"],
    },
)
