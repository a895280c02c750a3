"""The main job (``captum-mm reproduce``): the paper's study on the shipped models.

:class:`Options` says what runs, :func:`reproduce` runs it; each shipped model's evaluations
are its step in :data:`captum_mm.study.steps.STEPS` (:mod:`~captum_mm.study.vqa`,
:mod:`~captum_mm.study.detr`, :mod:`~captum_mm.study.llava`,
:mod:`~captum_mm.study.text`), its tables and report are
written by :mod:`captum_mm.study.report`; :mod:`captum_mm.study.faithfulness` notes the methods a model refuses,
scores Captum's infidelity and says which method wins each test and what leaving attention sinks out did.
"""

from captum_mm.study.job import reproduce
from captum_mm.study.options import Options
from captum_mm.study.report import CAPTIONS

__all__ = ["CAPTIONS", "Options", "reproduce"]
