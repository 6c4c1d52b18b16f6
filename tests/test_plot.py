"""plot.py on hand-written metrics.jsonl files: the series it draws, the PNG, and bad input."""
import json

import pytest

from tools import plot


def write_run(path, estimator, q, rows):
    path.mkdir()
    (path / "run_config.json").write_text(json.dumps({"estimator": estimator, "q": q}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_series_reads_what_train_logs(tmp_path):
    rows = [{"step": 0, "w_bar_mean": 0.1, "j_q": 3.0, "grad_norm": 1.0},
            {"step": 1, "w_bar_mean": 0.2, "j_q": 2.5, "grad_norm": 0.5, "val/maj@4": 25.0}]
    assert plot.series(rows, "w_bar_mean") == ([0, 1], [0.1, 0.2])
    assert plot.series(rows, "val/maj@") == ([1], [25.0])
    grpo = [{"step": 0, "reward_mean": 0.5}]
    assert plot.series(grpo, "w_bar_mean") == ([0], [0.5])  # GRPO's estimate of P on the batch
    label, loaded = plot.load_run(write_run(tmp_path / "a", "paft", 0.75, rows))
    assert label == "paft q=0.75" and loaded == rows


def test_main_writes_a_png_with_several_runs_overlaid(tmp_path):
    pytest.importorskip("matplotlib")
    a = write_run(tmp_path / "a", "garl", 0.5, [{"step": s, "w_bar_mean": 0.1 * (s + 1), "j_q": 1.0 / (s + 1),
                                                 "grad_norm": 1.0} for s in range(5)])
    b = write_run(tmp_path / "b", "grpo", 0.75, [{"step": s, "reward_mean": 0.0, "grad_norm": 0.0} for s in range(5)])
    out = plot.main([str(a), str(b), "--out", str(tmp_path / "c.png"), "--smooth", "2"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bad_input_names_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        plot.main([str(tmp_path)])
    run = write_run(tmp_path / "r", "paft", 1.0, [{"step": 0}])
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "w_bar\n')
    with pytest.raises(SystemExit, match="metrics.jsonl, line 2: not JSON"):
        plot.main([str(run)])
    with pytest.raises(SystemExit):
        plot.main([str(run), "--labels", "a,b"])
    assert "--labels has 2 labels for 1 runs" in capsys.readouterr().err
