"""notebooks/colab_tpu.ipynb runs end to end (quick mode: generated MovieLens-format data, weight-free
features, ddpg_multimodal --quick) so that it cannot rot; its cells are executed by nbclient as Colab would."""
import json

import nbformat
from nbclient import NotebookClient

from tests.helpers import REPO


def test_colab_notebook_runs_end_to_end_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("JAXREC_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("CI", "1")
    path = REPO / "notebooks" / "colab_tpu.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    final = json.loads((tmp_path / "runs" / "ddpg_multimodal" / "final.json").read_text())
    assert final["exp"] == "ddpg_multimodal" and 0.0 <= final["test"]["full"]["hr@10"] <= 1.0
    manifest = json.loads((tmp_path / "features" / "tiny-ml" / "manifest.json").read_text())
    assert set(manifest["modalities"]) == {"text", "meta"}
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| ddpg_multimodal | 1 |" in outputs  # the results table
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # the learning curves
