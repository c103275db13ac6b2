"""Reading image data sets into one compact, validated in-memory form.

Everything downstream works on :class:`ImageData` (uint8 images, int64 labels),
read once from a source folder and stored as a ``.npz`` with the arrays
``x_train`` (N, 32, 32, 3) uint8, ``y_train`` (N,) int64, ``x_test``,
``y_test``, ``classes`` (str) and ``group_train`` (int64: GTSRB track id, used
to split train/validation without near-duplicate leakage; the row index when
the source has no tracks) and ``path_train`` (str: each training image's source file, relative
to the folder it was read from, so that a flagged row names the file to remove; absent in data
made from arrays).

Supported sources:

* the official GTSRB layout (``GTSRB/Final_Training/Images/000NN`` with
  ``GT-000NN.csv``, ``GTSRB/Final_Test/Images`` + ``GT-final_test.csv``);
* torchvision's ``datasets.GTSRB`` folder (``gtsrb/GTSRB/Training`` ...);
* an ``ImageFolder``-style tree: ``ROOT/train/<class>/*`` and
  ``ROOT/test/<class>/*``, or ``ROOT/<class>/*`` from which a seeded,
  stratified 25 % (the paper's split) is held out as the test set.

Images are resized whole to 32x32 (bilinear, antialiased as PIL does when
shrinking), as the paper does; ``roi_crop=True`` crops to the GTSRB region of
interest first.
"""

from poisonsift.data.arrays import (IMAGE_SIZE, MIN_IMAGE_SIZE, ImageData, load_npz, read_npz, save_npz, thin_tracks,
                                    validate_arrays)  # fmt: skip
from poisonsift.data.readers import GTSRB_CLASSES, IMAGE_EXTENSIONS, prepare
from poisonsift.data.sources import download_gtsrb, find_default_gtsrb, resolve_data

__all__ = [
    "ImageData",
    "IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "GTSRB_CLASSES",
    "prepare",
    "load_npz",
    "save_npz",
    "read_npz",
    "resolve_data",
    "find_default_gtsrb",
    "download_gtsrb",
    "validate_arrays",
    "thin_tracks",
]
