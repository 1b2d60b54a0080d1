"""One-attempt downloads for dataset builders: fail fast offline, leave nothing behind.

tfds' download manager retries ten times with back-off (3.5 minutes offline
here) and can leave `*.tmp.*` folders in `<data_dir>/downloads`. Builders that
fetch one archive call `fetch` instead: a single attempt with a short timeout,
written to a temporary file that is renamed when complete and removed on any
failure, and one `DownloadError` whose message says what to do offline.
"""
import os
import pathlib
import shutil
import time
import urllib.error
import urllib.request
import uuid

from absl import logging

from gmseg import errors

TIMEOUT_S = 20.0       # connect / read inactivity limit of the single attempt
STALE_TMP_S = 3600.0   # leftovers older than this are from dead downloads


class DownloadError(errors.UserError, ConnectionError):
  """A download failed (offline, refused, timed out, HTTP error)."""


def remove_leftovers(download_dir: pathlib.Path, max_age_s: float = STALE_TMP_S) -> list[str]:
  """Deletes `*.tmp.*` files and folders older than `max_age_s` (dead downloads).

  Younger ones may belong to a download running in another process.
  """
  removed = []
  if not download_dir.is_dir():
    return removed
  now = time.time()
  for p in download_dir.glob("*.tmp.*"):
    try:
      if now - p.stat().st_mtime < max_age_s:
        continue
      shutil.rmtree(p) if p.is_dir() else p.unlink()
      removed.append(p.name)
    except OSError:
      continue
  if removed:
    logging.info("Removed leftovers of interrupted downloads in %s: %s", download_dir, removed)
  return removed


def fetch(url: str, download_dir, name: str, *, hint: str = "",
          timeout: float = TIMEOUT_S) -> pathlib.Path:
  """Downloads `url` to `<download_dir>/<name>` once (an existing file is reused).

  Args:
    hint: appended to the error message (e.g. how to pass a local copy).
    timeout: seconds the single attempt may wait for a connection or data.
  Raises:
    DownloadError naming the URL, the reason and `hint`; nothing is left behind.
  """
  download_dir = pathlib.Path(download_dir)
  dest = download_dir / name
  if dest.is_file():
    return dest
  download_dir.mkdir(parents=True, exist_ok=True)
  remove_leftovers(download_dir)
  tmp = download_dir / f"{name}.tmp.{uuid.uuid4().hex}"
  logging.info("Downloading %s to %s", url, dest)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
      shutil.copyfileobj(response, f, length=1 << 20)
    os.replace(tmp, dest)
  except (OSError, urllib.error.URLError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise DownloadError(f"Could not download {url} ({type(e).__name__}: {reason}; one "
                        f"attempt, {timeout:.0f} s timeout). {hint}".strip()) from None
  finally:
    if tmp.exists():
      tmp.unlink()
  return dest

