import json

from experiments.report import main


def _final(d, test, ci=None, seeds=1):
    d.mkdir(parents=True)
    f = {"exp": d.name, "seed": 0, "wall_s": 10.0 * seeds, "test": test}
    if seeds > 1:
        f["seeds"] = [{}] * seeds
        f["test_ci95"] = ci
    (d / "final.json").write_text(json.dumps(f))
    return d


def test_table_and_readme_section(tmp_path, capsys):
    a = _final(tmp_path / "a", {"full": {"hr@10": 0.5}, "drr": {"ndcg@5": 0.25}})
    b = _final(tmp_path / "b", {"full": {"hr@10": 0.4}}, ci={"full": {"hr@10": 0.01}}, seeds=3)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- table:x -->\nold\n<!-- /table:x -->\nend\n")
    assert main(["--runs", str(a), f"B={b}", "--metrics", "hr@10,drr:ndcg@5", "--readme", str(readme), "--section", "x"]) == 0
    out = capsys.readouterr().out
    assert "| a | 1 | 0.5000 | 0.2500 | 10.0 |" in out
    assert "| B | 3 | 0.4000 ± 0.0100 | – | 10.0 |" in out
    text = readme.read_text()
    assert text.startswith("intro\n<!-- table:x -->\n| experiment") and "old" not in text and text.endswith("<!-- /table:x -->\nend\n")


def test_missing_final_and_markers_are_errors(tmp_path, capsys):
    assert main(["--runs", str(tmp_path / "none")]) == 2
    assert "final.json: missing" in capsys.readouterr().err
    a = _final(tmp_path / "a", {"full": {"hr@10": 0.5}})
    (tmp_path / "R.md").write_text("no markers\n")
    assert main(["--runs", str(a), "--readme", str(tmp_path / "R.md"), "--section", "x"]) == 2
