import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _skip_refused_families(request):
    """A method's refused families (``methods_under_test.REFUSED``) are skipped by the tests running every method on
    every family (and ``CONTRACT_ONLY`` methods by all but the contract suite); the method's own tests check that it
    refuses them. A test's family: a parameter's value, a word
    of its module's name (``test_whisper``) or :data:`methods_under_test.FAMILY_OF_TEST`."""
    from methods_under_test import CONTRACT_ONLY, FAMILY_OF_TEST, REFUSED

    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if params.get("method") in CONTRACT_ONLY and request.node.module.__name__ != "test_contract":
        pytest.skip(f"{params['method']} runs on every family in the contract suite only")
    refused = REFUSED.get(params.get("method"), set())
    families = {str(value) for value in params.values()} | set(request.node.module.__name__.split("_"))
    families.add(FAMILY_OF_TEST.get(request.node.originalname, ""))
    if refused & families:
        pytest.skip(f"{params['method']} refuses {sorted(refused & families)}")
