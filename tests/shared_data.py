"""The real development footage beside the project (../shared/data, or $POSECAST_SHARED_DATA).

Tests that use it skip cleanly when it is absent, so the suite passes on a fresh machine.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSECAST_SHARED_DATA", REPO.parent / "shared" / "data"))
MESSI = SHARED / "messi5.jpg"
MEGAMIND = SHARED / "Megamind.avi"

needs_messi = pytest.mark.skipif(not MESSI.is_file(), reason=f"shared data {MESSI} not found")
needs_megamind = pytest.mark.skipif(not MEGAMIND.is_file(), reason=f"shared data {MEGAMIND} not found")
