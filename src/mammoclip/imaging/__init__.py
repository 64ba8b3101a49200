"""mammoclip.imaging: one mammogram, from DICOM bytes to the model's input image.

* :mod:`~mammoclip.imaging.dicom` -- decode a DICOM: modality LUT, VOI LUT / window, polarity, metadata;
* :mod:`~mammoclip.imaging.breast` -- breast segmentation, crop, resize/pad, flip, and the transform
  record that maps boxes and masks between original and processed pixels;
* :mod:`~mammoclip.imaging.imageio` -- PNG read/write (8/16 bit) and atomic file writes;
* :mod:`~mammoclip.imaging.failures` -- the stable failure codes (``TOO_LARGE``, ``DECODE_PANIC``, ...) that
  a failed image is reported with.

Layer 0: numpy, scipy, OpenCV, pydicom (lazily); no torch, no pandas, no manifests. The batch job over
a manifest (pool, sidecars, ``failures.csv``) is :mod:`mammoclip.data.preprocess`.
"""
