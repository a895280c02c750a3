"""Repeated explanations leave nothing behind: no LRP state alive, resident memory flat."""

import gc
import os
import warnings
from pathlib import Path
from typing import Optional

import pytest

from captum_mm.lrp import LRPState
from helpers import bert_case, lxmert_case
from methods_under_test import METHODS

WARM_UP, CALLS = 10, 50
# LRP once leaked its whole graph with every call: 0.23 MiB per call on the tiny BERT, 1.2 MiB on
# the tiny LXMERT (11 and 60 MiB over CALLS). After warm-up, calls that free everything leave
# resident memory flat (measured: at most 0.3 MiB over CALLS).
ALLOWED_GROWTH_MIB = 4.0
STATM = Path("/proc/self/statm")


def resident_mib() -> Optional[float]:
    """Resident memory (Linux only: None elsewhere)."""
    gc.collect()
    if not STATM.exists():
        return None
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_lrp_states() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch objects warns of deprecations
        warnings.simplefilter("ignore")
        return sum(isinstance(obj, LRPState) for obj in gc.get_objects())


# The LRP methods, and one method with and one without a backward pass (capture_attention alone).
@pytest.mark.parametrize("method", ["partial-lrp", "transformer-attribution", "generic-lrp", "generic", "raw-attention"])
@pytest.mark.parametrize("build", [bert_case, lxmert_case], ids=["bert", "lxmert"])
def test_repeated_explanations_free_their_memory(build, method):
    case = build()
    explainer = METHODS[method](case.forward, case.model)
    for _ in range(WARM_UP):
        explainer.explain(case.inputs, None, case.additional)
    states, before = live_lrp_states(), resident_mib()
    for _ in range(CALLS):
        explainer.explain(case.inputs, None, case.additional)
    after = resident_mib()
    assert live_lrp_states() == states, "LRPState objects outlive their explanations"
    if before is not None:
        assert after - before < ALLOWED_GROWTH_MIB, f"{after - before:.1f} MiB more resident memory after {CALLS} calls"
