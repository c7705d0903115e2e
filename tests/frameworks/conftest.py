"""The framework suite (marker ``frameworks``; deselect with ``-m "not frameworks"``):
fastopt.torch inside Hugging Face ``Trainer``, Lightning, accelerate and
``torch.compile``, on tiny randomly initialised models built from configs.

Nothing is downloaded: the Hugging Face libraries are told they are offline before any
test imports them. The frameworks are imported inside the tests, so a checkout without
them can still run ``-m "not frameworks"``; with the test extra installed (CI) they are
there, and a missing one fails its tests rather than skipping them.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
