"""xaibench.benchtable: ratios, rendering, saving and comparing (on a hand-made pytest-benchmark JSON)."""

import json

from xaibench import benchtable


def _raw(ours=2.0, anchor=5.0, limit=1.0, commit="abc12345"):
    def b(name, group, side, median):
        return {"name": name, "group": group, "extra_info": {"side": side}, "stats": {"median": median}}
    return {"commit_info": {"id": commit, "dirty": False}, "datetime": "2026-11-29T12:00:00",
            "machine_info": {"node": "n", "python_version": "3.11"},
            "benchmarks": [b("t_ours", "g", "xaibench", ours), b("t_anchor", "g", "anchor", anchor),
                           b("t_limit", "g", "limit", limit), b("t_plain", "g", "plain", 3.0),
                           b("untagged", "g", None, 9.0), b("t_only", "h", "xaibench", 1.0)]}


def test_table_ratios_and_render():
    doc = benchtable.build(_raw())
    g = doc["groups"]["g"]
    assert g["seconds"] == {"xaibench": 2.0, "anchor": 5.0, "limit": 1.0, "plain": 3.0}
    assert g["anchor_over_ours"] == 2.5 and g["ours_over_limit"] == 2.0
    assert "anchor_over_ours" not in doc["groups"]["h"]
    text = benchtable.render(doc)
    assert "2.50x" in text and "2.00x" in text and "plain 3.000 s" in text and "machine:" in text


def test_save_and_compare_flags_a_slowdown(tmp_path, capsys):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw()))
    assert benchtable.main([str(raw), "--save", str(tmp_path / "bench")]) == 0
    saved = list((tmp_path / "bench").glob("bench-*-abc12345.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["groups"]["g"]["ours_over_limit"] == 2.0
    raw.write_text(json.dumps(_raw(ours=3.0, commit="def67890")))
    capsys.readouterr()
    assert benchtable.main([str(raw), "--compare", str(saved[0])]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("g "))
    assert "1.50x" in line and "SLOWER" in line
    assert next(l for l in out.splitlines() if l.startswith("h ")).count("SLOWER") == 0


def test_missing_raw_is_a_clear_error(tmp_path, capsys):
    assert benchtable.main([str(tmp_path / "nope.json")]) == 2
    assert "--benchmark-json" in capsys.readouterr().err


def test_several_raw_files_are_merged(tmp_path, capsys):
    a, b = _raw(), _raw()
    b["benchmarks"] = [dict(x, group="k") for x in b["benchmarks"]]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p, r in zip(paths, (a, b)):
        p.write_text(json.dumps(r))
    assert benchtable.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert any(l.startswith("g ") for l in out.splitlines()) and any(l.startswith("k ") for l in out.splitlines())
