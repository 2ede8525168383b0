"""The container-matched environment's dependency conflicts are exactly the known ones.

Why not a blanket ``pip check``: the environment is built as AWS builds the
training container, the image's packages first (``requirements-containers.txt``:
``sagemaker-training`` 5.x among them) and then ``ml_scripts/requirements.txt``
on top, as the toolkit installs it at job start. smdebug 1.0.34 needs
``protobuf<=3.20.3`` and ``sagemaker-training`` 5.x declares ``protobuf>=5.28.1``,
so no conflict-free set with smdebug exists, and pip reports that one conflict
in the real image too. The toolkit's only protobuf user is its RecordIO
encoder (``record_pb2``), which the training entry point does not import and
which still imports under 3.20.3 (checked below); the trial and final-job tests
in this folder pass in this very environment. Any other conflict is new and
fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

#: Each known conflict, as a regex over one ``pip check`` line, with why it is accepted.
KNOWN_CONFLICTS: dict[str, str] = {
    r"sagemaker-training 5\.\d+\.\d+ has requirement protobuf>=5\.28\.1, but you have protobuf 3\.20\.3\.":
        "smdebug 1.0.34 pins protobuf<=3.20.3; ml_scripts/requirements.txt installs it over the image's 5.x",
}


def pip_check_lines() -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"], check=False,
                            capture_output=True, text=True, timeout=120)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def test_pip_reports_exactly_the_known_conflicts():
    lines = pip_check_lines()
    unexplained = [line for line in lines if not any(re.fullmatch(p, line) for p in KNOWN_CONFLICTS)]
    assert not unexplained, f"new dependency conflicts: {unexplained}"
    unseen = [p for p in KNOWN_CONFLICTS if not any(re.fullmatch(p, line) for line in lines)]
    assert not unseen, f"known conflicts no longer reported (update KNOWN_CONFLICTS and docs/aws.md): {unseen}"


def test_the_image_layer_and_our_additions_are_both_there():
    """sagemaker-training 5.x as the 2.6 image installs it, with our numpy/protobuf/smdebug on top."""
    assert metadata.version("sagemaker-training").startswith("5.")
    assert metadata.version("protobuf") == "3.20.3"
    assert metadata.version("smdebug") == "1.0.34"
    assert metadata.version("numpy") == "1.26.4"


def test_the_images_scipy_accepts_our_numpy():
    """The image's scipy stays (pip did not replace it) and declares a numpy range that holds 1.26.4."""
    assert metadata.version("scipy") == "1.15.2"
    numpy_requirement = next(r for r in metadata.requires("scipy") or [] if re.match(r"numpy\b", r))
    assert ">=1.23.5" in numpy_requirement, numpy_requirement
    import numpy
    import scipy.linalg
    import scipy.ndimage

    assert numpy.__version__ == "1.26.4"
    assert float(scipy.linalg.det(numpy.eye(3))) == 1.0
    assert scipy.ndimage.zoom(numpy.ones((2, 2)), 2).shape == (4, 4)


def test_the_toolkits_only_protobuf_user_is_off_the_entry_points_path_and_still_loads():
    code = ("import sys, sagemaker_training.cli.train, sagemaker_training.trainer; "
            "assert not any('record_pb2' in m for m in sys.modules), 'trainer imports record_pb2'; "
            "from sagemaker_training import encoders, recordio; print(recordio.Record.DESCRIPTOR.full_name)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("Record")
