"""The interactive view's cases, built once for its unit and browser tests."""

import pytest
from view_cases import classification_case, detection_case, generation_case, several_images_case

generation = pytest.fixture(scope="session", name="generation")(generation_case)
several_images = pytest.fixture(scope="session", name="several_images")(several_images_case)
detection = pytest.fixture(scope="session", name="detection")(detection_case)
classification = pytest.fixture(scope="session", name="classification")(classification_case)
