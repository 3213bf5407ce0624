"""Data checks on cached vectors: duplicates and leakage, label issues, a map, a
label-budget curve, and similar-image search.

The vectors featx caches are what dataset-quality tools compute first; here they
come from the same store as the baseline's, so an audit after a baseline forwards
no image. Optional dependencies (the ``audit`` extra): cleanlab for label issues,
faiss-cpu for neighbours (scikit-learn otherwise), pandas for the result tables.

Examples
--------
>>> from featx.quality import CHECKS
>>> CHECKS
('duplicates', 'labels', 'map', 'budget')
"""

from ._checks import (CANDIDATE_QUANTILE, COPY_QUANTILE, LEAKING, MAX_DISTINCT_ABOVE,
                      MAX_VERIFIED, Calibration, calibrate, duplicate_pairs, label_budget, label_issues, near_copy, project_2d,
                      relation)
from ._neighbours import nearest, neighbour_backend, unit_rows
from ._run import CHECKS, AuditResult, Match, audit, audit_baseline, similar
from ._verify import (MAX_CROP, PARALLEL_PAIRS, VERIFY_SIZE, PixelVerifier, copy_score,
                      thumbnail, verify_pairs)

__all__ = ["audit", "audit_baseline", "AuditResult", "similar", "Match", "CHECKS",
           "Calibration", "calibrate", "COPY_QUANTILE", "CANDIDATE_QUANTILE",
           "MAX_DISTINCT_ABOVE", "MAX_VERIFIED", "LEAKING", "PixelVerifier", "copy_score",
           "thumbnail", "VERIFY_SIZE", "MAX_CROP", "verify_pairs", "PARALLEL_PAIRS",
           "duplicate_pairs", "label_budget", "label_issues", "near_copy", "project_2d",
           "relation", "nearest", "neighbour_backend", "unit_rows"]
