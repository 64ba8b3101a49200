"""mammoclip.data: manifests and the plumbing around them.

* :mod:`~mammoclip.data.manifest` -- the tidy manifest (images, boxes, reports), validation, splits;
* :mod:`~mammoclip.data.adapters` -- one adapter per source (folder, VinDr, RSNA, CBIS-DDSM, official CSV,
  synthetic) producing a manifest bundle;
* :mod:`~mammoclip.data.preprocess` -- the batch job: a bundle's DICOMs -> processed PNGs + manifest
  (pool, resumable sidecars, shards, ``failures.csv``), built on :mod:`mammoclip.imaging`;
* :mod:`~mammoclip.data.datasets`, :mod:`~mammoclip.data.transforms` -- torch datasets and image transforms.

The modules that used to live here (``dicom``, ``breast``, ``imageio``, ``reports``, ``prompts``,
``text_augment``, ``text_stats``, ``synthetic``) moved to :mod:`mammoclip.imaging`, :mod:`mammoclip.text`
and :mod:`mammoclip.synthetic`; their old import paths keep working through 0.1.x, with a warning, and go in 0.2.
"""

from mammoclip import _moved

_moved.install()
