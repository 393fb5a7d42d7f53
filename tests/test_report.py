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


def test_curves_average_the_seeds_and_draw_the_published_lines(tmp_path, capsys):
    """``experiments/curves.py``: a run of several seeds is drawn as the mean over its seeds at the steps all of
    them evaluated (here 10 and 20: seed 1 never reached 30); a one-seed run is its own curve."""
    import json

    from experiments.curves import main as curves_main

    def write(path, points):
        path.mkdir(parents=True)
        lines = [{"step": s, "loss": 1.0} for s, _ in points] + [{"step": s, "val": {"next_item": {"ndcg@10": v}}}
                                                                  for s, v in points]
        (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    write(tmp_path / "multi" / "seed0", [(10, 0.1), (20, 0.3), (30, 0.5)])
    write(tmp_path / "multi" / "seed1", [(10, 0.2), (20, 0.5)])
    write(tmp_path / "one", [(10, 0.05), (20, 0.15)])
    out = tmp_path / "fig" / "curves.png"
    assert curves_main(["--runs", f"m={tmp_path / 'multi'}", f"o={tmp_path / 'one'}", "--ref", "pub=0.6",
                        "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "m: val next_item/ndcg@10 0.1500 (step 10) ... 0.4000 (step 20), best 0.4000" in printed
    assert "o: val next_item/ndcg@10 0.0500 (step 10) ... 0.1500 (step 20)" in printed
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "  reaches pub (0.6) never" in printed
    # Against wall seconds: the seeds' mean wall at each step; the first evaluation whose mean reaches a target.
    for seed, walls in (("seed0", (4.0, 8.0, 12.0)), ("seed1", (6.0, 10.0))):
        path = tmp_path / "multi" / seed / "metrics.jsonl"
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        for rec in recs:
            rec["wall_s"] = walls[rec["step"] // 10 - 1]
        path.write_text("".join(json.dumps(x) + "\n" for x in recs))
    assert curves_main(["--runs", f"m={tmp_path / 'multi'}", "--ref", "t=0.3", "--x", "wall_s", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "m: val next_item/ndcg@10 0.1500 (wall_s 5) ... 0.4000 (wall_s 9)" in printed
    assert "  reaches t (0.3) at wall_s 9" in printed
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert curves_main(["--runs", f"b={tmp_path / 'bad'}", "--out", str(tmp_path / "b.png")]) == 2
    assert f"{tmp_path / 'bad' / 'metrics.jsonl'}:2: not a JSON line" in capsys.readouterr().err
