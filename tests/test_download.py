"""Offline fail-fast downloads (gmseg.data.download) against a local port that
refuses connections: one attempt, one message, nothing left in the downloads dir."""
import os
import pathlib
import socket
import time

import pytest

from gmseg import errors
from gmseg.data import download
from gmseg.data import fasseg
from gmseg.data import pipeline


def _refused_url() -> str:
  # Bind then close: nothing listens on the port, so connecting is refused at once.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/archive.zip"


def test_fetch_fails_fast_and_leaves_nothing(tmp_path):
  url = _refused_url()
  stale = tmp_path / "old.zip.tmp.0123abcd"  # a folder tfds left behind an hour ago
  stale.mkdir()
  os.utime(stale, (time.time() - 7200, time.time() - 7200))
  fresh = tmp_path / "other.zip.tmp.beef"   # maybe another process's download: kept
  fresh.write_bytes(b"x")
  start = time.monotonic()
  with pytest.raises(download.DownloadError, match=rf"Could not download {url} .*refused"
                                                   r".*one attempt.*pass a local copy"):
    download.fetch(url, tmp_path, "a.zip", hint="Offline: pass a local copy.")
  assert time.monotonic() - start < 5
  assert sorted(p.name for p in tmp_path.iterdir()) == ["other.zip.tmp.beef"]


def test_fasseg_without_network_is_one_user_error(tmp_path, monkeypatch):
  monkeypatch.setattr(fasseg, "ARCHIVE_URL", _refused_url())
  start = time.monotonic()
  with pytest.raises(errors.UserError) as info:
    pipeline.load_split("fasseg/frontal02", "train", resolution=32, data_dir=tmp_path)
  assert time.monotonic() - start < 30  # was 3 min 24 s of retries
  message = str(info.value)
  assert isinstance(info.value, download.DownloadError), message
  assert "--manual_dir" in message and "refused" in message, message
  leftovers = [p.relative_to(tmp_path) for p in pathlib.Path(tmp_path).rglob("*.tmp.*")]
  assert leftovers == []
