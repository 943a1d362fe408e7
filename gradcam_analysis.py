"""Grad-CAM attention leakage for the models skin_lesion_analysis.py trained.

The reference study's script, kept working: run it in the folder holding the ISIC 2016
Part 3B files after ``python skin_lesion_analysis.py`` (``--help`` for options). dermcam
does the work (:func:`dermcam.study.main_gradcam`); this file also works when copied into
a data folder, as long as dermcam is installed.
"""

import sys

try:
    from dermcam.study import main_gradcam
except ModuleNotFoundError as exc:
    if exc.name != "dermcam":
        raise
    sys.exit("error: dermcam is not installed; run 'pip install -e .' in the dermcam "
             "repository")

if __name__ == "__main__":
    sys.exit(main_gradcam())
