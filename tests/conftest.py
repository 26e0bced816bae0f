"""Shared by every test folder: the fault tests' figures (tests/reliability.py)."""

import pytest

from tests.reliability import Figures


@pytest.fixture(scope="session")
def figures():
    collected = Figures()
    yield collected
    collected.save()
