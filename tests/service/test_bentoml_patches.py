"""The request-metrics endpoint name is drawn from a closed set, whatever path a client sends."""

import pytest

from service.admin import endpoint_names, endpoint_templates
from service.bentoml_patches import OTHER_ENDPOINT, EndpointNames

NAMES = EndpointNames(exact=["/classify", *endpoint_names()], templates=endpoint_templates())


@pytest.mark.parametrize("path, name", [
    ("/classify", "/classify"),
    ("/admin/guardrails", "/admin/guardrails"),
    ("/admin/predictions", "/admin/predictions"),
    ("/admin/predictions/0193f0c2aa", "/admin/predictions/{request_id}"),
    ("/admin/predictions/a/b", OTHER_ENDPOINT),
    ("/classify/", OTHER_ENDPOINT),
    ("/CLASSIFY", OTHER_ENDPOINT),
    ("/made-up/123", OTHER_ENDPOINT),
    ("", OTHER_ENDPOINT),
])
def test_paths_map_to_a_route_its_template_or_other(path, name):
    """Known routes name themselves, parametrised ones their template, anything else `other`."""
    assert NAMES(path) == name


def test_ten_thousand_distinct_paths_give_few_names():
    """10,000 distinct made-up and id paths map into the declared names only."""
    seen = {NAMES(f"/x/{i}") for i in range(5000)} | {NAMES(f"/admin/predictions/{i}") for i in range(5000)}
    assert seen <= NAMES.names() and len(seen) == 2
