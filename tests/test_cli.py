from captum_mm.cli import main


def test_demo_prints_relevance(capsys):
    main(["demo"])
    printed = capsys.readouterr().out
    assert "text relevance" in printed and "image relevance" in printed


def test_segmentation_command(tmp_path, capsys):
    import json

    from captum_mm.datasets import write_shapes_coco
    from helpers import detr
    from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

    annotations = write_shapes_coco(tmp_path, 2, seed=1, size=64)
    detr(num_queries=4).save_pretrained(tmp_path / "model")
    DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(tmp_path / "model")
    main([
        "segmentation", "--images", str(tmp_path / "val"), "--annotations", str(annotations), "--model",
        str(tmp_path / "model"), "--methods", "ours", "rollout", "--threshold", "0.0", "--output", str(tmp_path / "out.json"),
    ])
    assert "IoU 0.50:0.05:0.95 (COCO)" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "out.json").read_text())) == {"ours", "rollout"}
