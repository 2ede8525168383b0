"""Where things are in the checkout: the three code roots and the build folder.

Why one module: the local runtime, the deploy tool and the tests all locate
the same folders; deriving them once from this file's place keeps them in
step when the package moves.
"""

from __future__ import annotations

from pathlib import Path

#: The checkout: ``breedline/build/paths.py`` sits two folders below it.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The Lambda root (``app.py``, ``chalicelib/``), as ``chalice package`` reads it.
APP_DIR = REPO_ROOT / "chalice_app"
#: SageMaker's ``source_dir``: the training and serving scripts.
ML_SCRIPTS = REPO_ROOT / "ml_scripts"
#: The shared vocabulary; it ships in ``sourcedir.tar.gz`` and at the Lambda zip's root.
CONTRACT = ML_SCRIPTS / "contract.py"
#: Generated artifacts (ignored by git): build copies, packaged templates, caches.
BUILD_DIR = REPO_ROOT / "build"
