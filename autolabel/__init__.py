"""autolabel: pre-label medical images in RedBrick AI projects with segmentation models.

The pipeline fetches the Label-stage tasks assigned to an API key, runs a model on their
series, converts the label maps into RedBrick's ``series`` format and saves them as drafts
(or submits them). See README.md for the command line and the Python API.
"""

from __future__ import annotations

from autolabel.errors import AutolabelError
from autolabel.records import Volume

__version__ = "0.1.0"

__all__ = ["AutolabelError", "Volume", "__version__"]
