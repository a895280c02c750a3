from captum_mm.cli import main


def test_demo_prints_relevance(capsys):
    main(["demo"])
    printed = capsys.readouterr().out
    assert "text relevance" in printed and "image relevance" in printed
