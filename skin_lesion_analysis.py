"""Train and compare ResNet18, EfficientNet-B0 and MobileNet-V2 on ISIC 2016 Part 3B.

The reference study's script, kept working: run it in the folder holding the ISIC 2016
Part 3B files (``python skin_lesion_analysis.py``, ``--help`` for options). dermcam does
the work (:func:`dermcam.study.main_train`); this file also works when copied into a data
folder, as long as dermcam is installed.
"""

import sys

try:
    from dermcam.study import main_train
except ModuleNotFoundError as exc:
    if exc.name != "dermcam":
        raise
    sys.exit("error: dermcam is not installed; run 'pip install -e .' in the dermcam "
             "repository")

if __name__ == "__main__":
    sys.exit(main_train())
