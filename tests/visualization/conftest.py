"""The interactive view's cases, built once for its unit and browser tests."""

import pytest
from view_cases import classification_case, detection_case, generation_case, several_images_case


@pytest.fixture(scope="session")
def generation():
    return generation_case()


@pytest.fixture(scope="session")
def detection():
    return detection_case()


@pytest.fixture(scope="session")
def classification():
    return classification_case()


@pytest.fixture(scope="session")
def several_images():
    return several_images_case()
