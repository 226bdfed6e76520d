"""Fixtures shared by test modules: one local Spark session for the whole run."""

from __future__ import annotations

import pytest

from baselines import spark


@pytest.fixture(scope="session")
def spark_session():
    """One local Spark for the run. A missing Java or pyspark fails the test that needs it (it
    never skips), saying what to install."""
    try:
        session = spark.start_session("local[2]", "1g")
    except ImportError as error:
        pytest.fail(f"pyspark is missing ({error}): `make install` installs the baselines extra")
    except RuntimeError as error:  # no Java on this machine
        pytest.fail(f"{error}; `make test` installs it")
    yield session
    session.stop()
