"""Shared test fixtures.

Tests that need the read-only `../shared` folder (FASSEG, fixtures) find it via
`GMSEG_SHARED` (default: `../shared` beside the repository root). They skip with
a reason when it is absent, except under `GMSEG_REQUIRE_SHARED=1` (set by
`.ci/run`), where a missing folder is a failure.
"""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> pathlib.Path:
  """Returns a path under the shared folder, or skips/fails when it is missing."""
  root = pathlib.Path(os.environ.get("GMSEG_SHARED", REPO.parent / "shared"))
  path = root.joinpath(*parts)
  if not path.exists():
    msg = (f"{path} is missing: set GMSEG_SHARED to the folder holding "
           "data/fasseg and fixtures/ (default ../shared beside the repo).")
    if os.environ.get("GMSEG_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return path


@pytest.fixture
def shared():
  """The shared folder; use as `shared_path(...)` for sub-paths."""
  return shared_path()
