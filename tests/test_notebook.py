"""notebooks/quickstart.ipynb runs top to bottom without errors (nbclient, this interpreter).

The kernel is `python3` resolved through a kernelspec written into a temporary
prefix (ipykernel.kernelspec.install), so it runs `sys.executable` whatever
kernels the machine has. TFDS_DATA_DIR points the notebook's rendered faces
into the test's temporary folder.
"""
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ipykernel_spec = pytest.importorskip("ipykernel.kernelspec")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _outputs(cell) -> str:
  text = []
  for out in cell.get("outputs", []):
    if "text" in out:
      text.append(out["text"])
    text.extend(str(v) for k, v in out.get("data", {}).items() if k == "text/plain")
  return "".join(text)


def test_quickstart_runs(tmp_path_factory, monkeypatch):
  prefix = tmp_path_factory.mktemp("kernel")
  ipykernel_spec.install(prefix=str(prefix), kernel_name="python3")
  kernels = prefix / "share" / "jupyter"
  assert sys.executable in (kernels / "kernels" / "python3" / "kernel.json").read_text()
  monkeypatch.setenv("JUPYTER_PATH", str(kernels))
  # Shared with the other tests' rendered faces when run in one session.
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds_rendered"))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()  # raises CellExecutionError (with the traceback) on any error
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(out.get("output_type") != "error" for c in code for out in c.get("outputs", []))
  text = "".join(_outputs(c) for c in code)
  assert "FG-mIoU" in text and "kept 24 generated images" in text
  assert "annotate segmenter, step" in text and "downstream segmenter, step" in text
  assert "logits: (4, 32, 32, 6)" in text and "quickstart done" in text
  # The label grid is displayed as an image.
  assert any("image/png" in out.get("data", {}) for c in code for out in c.get("outputs", []))
