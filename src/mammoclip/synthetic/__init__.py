"""Seeded synthetic screening-mammography cohort (the embedded default data set).

``generate_cohort(out_dir, n_patients, seed=0, image_size=(H, W), fmt="png"|"dicom", workers=1,
overwrite=False, **options) -> Path`` writes images, masks, boxes, reports and a manifest that
agree with each other; see ``docs/synthetic.md``. Layer 0: numpy, scipy, OpenCV and pydicom only.
"""

from __future__ import annotations

from mammoclip.synthetic.cohort import GENERATOR_VERSION, CohortConfig, generate_cohort
from mammoclip.synthetic.lesions import FINDING_KINDS

__all__ = ["generate_cohort", "CohortConfig", "GENERATOR_VERSION", "FINDING_KINDS"]
