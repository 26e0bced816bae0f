"""One test per kustomization a user can apply: the base and each overlay."""

import pytest

from k8s_render import TARGETS


@pytest.fixture(params=TARGETS)
def target(request) -> str:
    return request.param
