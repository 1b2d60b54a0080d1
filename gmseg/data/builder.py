"""The base class of gmseg's tfds builders."""
from absl import logging
import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder that needs none of tfds' optional dependencies.

  tfds 4.9.10 resolves `code_path` through `importlib_resources` (which
  current etils no longer installs) only to find a checksums file next to the
  builder's code; gmseg's builders ship none (manual downloads, generated
  data, or an archive pinned by commit), so there is nothing to find.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _log_download_bytes(self) -> None:
    # tfds prints "Downloading and preparing dataset Unknown size ..." to
    # stdout: misleading for local builds and noise beside our progress.
    logging.info("Preparing dataset %s in %s (first use; later runs reuse it).",
                 self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Dataset %s is ready in %s.", self.name, self.data_dir)
