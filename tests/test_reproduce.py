"""The main job runs end to end on a tiny sample and writes every output file."""

from captum_mm.cli import main


def test_reproduce_writes_every_output(tmp_path, capsys):
    output = tmp_path / "study"
    main(["reproduce", "--output", str(output), "--samples", "4", "--images", "2", "--gallery", "2",
          "--methods", "ours", "rollout", "w/o norm."])
    printed = capsys.readouterr().out
    assert "AUC of every method" in printed and "segmentation, IoU 0.20:0.05:0.95" in printed
    for name in ("report.html", "results.json", "table_1.csv"):
        assert (output / name).stat().st_size > 0
    for model in ("lxmert-easyvqa", "visualbert-easyvqa"):
        for name in ("results.json", "curves.png", "gallery.png"):
            assert (output / model / name).stat().st_size > 0
    assert (output / "detr-shapes" / "masks.png").exists() and (output / "detr-shapes" / "segmentation.json").exists()
    assert "data:image/png;base64," in (output / "report.html").read_text()
