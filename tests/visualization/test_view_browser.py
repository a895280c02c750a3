"""The interactive view in a real browser: headless Debian chromium driven by selenium. Clicking a generated token
colours the prompt and paints the heat map with that token's relevance, hover previews, the method switcher
switches, a DETR box shows its map and mask, a classifier's text and image sit side by side, user text stays text.

Skipped when chromium or its driver is missing, except in CI (``CI=true``), where that fails: ``.ci/run`` installs
Debian's ``chromium`` and ``chromium-driver``."""

import os
import shutil

import pytest
from view_cases import GENERATED, HOSTILE, expected_heat, expected_token_colours, token_colour

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {what}: .ci/run installs the Debian packages chromium and chromium-driver.")
    pytest.skip(f"{what} (apt-get install chromium chromium-driver; pip install selenium): the browser test needs them.")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:
        _missing("selenium is not installed")
    if not (CHROMIUM and DRIVER):
        _missing(f"no {'chromium' if not CHROMIUM else 'chromedriver'} on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, page, tmp_path):
    browser.get((page.save_html(tmp_path / "view.html")).resolve().as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


def rgb(text: str):
    return tuple(int(part) for part in text[text.index("(") + 1: text.index(")")].split(",")[:3])


def chips(browser, output: str):
    return browser.find_elements("css selector", f'.cmm-strip[data-output="{output}"] .cmm-token')


def colours(browser, output: str):
    return [rgb(chip.value_of_css_property("background-color")) for chip in chips(browser, output)]


def heat(browser, index: int = 0):
    pixels = browser.execute_script(
        "var c = document.querySelectorAll('canvas.cmm-heat')[arguments[0]];"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);", index)
    return [tuple(pixels[i:i + 3]) for i in range(0, len(pixels), 4)]


def methods(browser):
    return browser.find_elements("css selector", ".cmm-methods button")


def assert_shows_token(browser, explanation, token: int) -> None:
    prompt, earlier = expected_token_colours(explanation, token)
    assert colours(browser, "text") == prompt
    assert colours(browser, "generated")[:token] == earlier
    assert heat(browser) == expected_heat(explanation.image[0, token])


def test_clicking_a_generated_token_shows_its_relevance(browser, generation, tmp_path):
    runs, page = generation
    open_page(browser, page, tmp_path)
    ours, rollout = runs["TransformerAttribution"], runs["AttentionRollout"]
    assert [chip.text for chip in chips(browser, "generated")] == GENERATED
    assert_shows_token(browser, ours, 0)  # the first token, until another is picked
    before = colours(browser, "text"), heat(browser)
    chips(browser, "generated")[3].click()
    assert_shows_token(browser, ours, 3)
    assert (colours(browser, "text"), heat(browser)) != before
    assert "cmm-selected" in chips(browser, "generated")[3].get_attribute("class")

    methods(browser)[1].click()  # the method switcher: the same token, the other method's relevance
    assert_shows_token(browser, rollout, 3)
    assert "cmm-on" in methods(browser)[1].get_attribute("class")

    from selenium.webdriver import ActionChains, Keys

    ActionChains(browser).move_to_element(chips(browser, "generated")[1]).perform()  # hover previews
    assert_shows_token(browser, rollout, 1)
    later = [chip.value_of_css_property("background-color") for chip in chips(browser, "generated")[1:]]
    assert later == ["rgba(0, 0, 0, 0)"] * 3  # the hovered token and those after it explain nothing of it
    ActionChains(browser).move_to_element(methods(browser)[0]).perform()  # leaving it: back to the clicked token
    assert_shows_token(browser, rollout, 3)
    chips(browser, "generated")[2].send_keys(Keys.ENTER)  # by keyboard
    assert_shows_token(browser, rollout, 2)


def test_opacity_slider_and_user_text(browser, generation, tmp_path):
    open_page(browser, generation[1], tmp_path)
    slider = browser.find_element("css selector", "input.cmm-opacity")
    canvas = browser.find_element("css selector", "canvas.cmm-heat")
    assert canvas.value_of_css_property("opacity") == "0.6"
    browser.execute_script("arguments[0].value = 25; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert canvas.value_of_css_property("opacity") == "0.25"
    assert chips(browser, "text")[1].text == HOSTILE  # shown as text, never parsed as markup
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length + (window.pwned || 0)") == 0


def test_a_prompts_images_share_one_colour_scale(browser, several_images, tmp_path):
    explanation, page = several_images
    open_page(browser, page, tmp_path)
    chips(browser, "generated")[1].click()
    maps = explanation.image[0, 1]
    scale = maps.double().abs().max().item()
    assert [heat(browser, index) for index in range(2)] == [expected_heat(maps[0], scale), expected_heat(maps[1], scale)]


def test_clicking_a_detection_box_shows_its_map_and_mask(browser, detection, tmp_path):
    runs, page = detection
    open_page(browser, page, tmp_path)
    boxes = browser.find_elements("css selector", ".cmm-box")
    assert len(boxes) == 6
    mask = browser.find_element("css selector", "img.cmm-mask")
    for query in (4, 2):
        boxes[query].click()
        assert heat(browser) == expected_heat(runs["TransformerAttribution"].image[0, query])
        assert mask.get_attribute("src") == page.data["masks"]["TransformerAttribution"][query]
        assert "cmm-on" in boxes[query].get_attribute("class")
    methods(browser)[1].click()
    assert heat(browser) == expected_heat(runs["AttentionRollout"].image[0, 2])
    assert mask.get_attribute("src") == page.data["masks"]["AttentionRollout"][2]


def test_classifier_text_and_image_side_by_side(browser, classification, tmp_path):
    explanation, page = classification
    open_page(browser, page, tmp_path)
    text = explanation.text[0].double()
    assert colours(browser, "text") == [token_colour(v / text.abs().max().item()) for v in text.tolist()]
    assert heat(browser) == expected_heat(explanation.image[0])
    words = browser.find_element("css selector", ".cmm-text").rect
    image = browser.find_element("css selector", ".cmm-frame").rect
    assert words["x"] + words["width"] <= image["x"] and abs(words["y"] - image["y"]) < 40  # one row, text first
    assert not methods(browser)  # one method: no switcher, its name in the summary line
    assert browser.find_element("css selector", ".cmm-info").text.startswith("ours \u00b7 explained prediction: ")
