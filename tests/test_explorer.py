"""The explorer page (--html): its numbers, its size, and the page itself in a real browser
(headless Chromium driven by selenium), checked against the model's own forward()."""
import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import forward, load_weights, read_picture, to_input
from deit_functional.explorer import quantised_rows
from deit_functional.model import G, H, L
from script_runs import ATTENTION, GRADIENT, run
from timm_reference import random_timm_model

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def page_data(page):
    """The numbers embedded in a page, as the page's script reads them."""
    text = page.read_text(encoding="utf-8")
    return json.loads(re.search(r"const D = (\{.*?\});\n", text).group(1).replace("<\\/", "</"))


def decoded(b64, dtype=np.uint8):
    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


@pytest.fixture(scope="module")
def peaked_checkpoint(tmp_path_factory):
    """Seeded random weights whose queries and keys are scaled up, so that attention is peaked and
    differs between heads and tokens: a value read for the wrong head, token or patch shows."""
    path = tmp_path_factory.mktemp("peaked") / "peaked.pth"
    torch.save(peaked(random_timm_model().state_dict()), path)
    return path


def peaked(state):
    """A timm state dict with every block's qkv weight (queries, keys and values) six times larger."""
    for block in range(L):
        state[f"blocks.{block}.attn.qkv.weight"] = state[f"blocks.{block}.attn.qkv.weight"] * 6
    return state


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    rng = np.random.default_rng(3)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), 20, axis=0), 20, axis=1)
    Image.fromarray(pixels).save(path)  # 240 x 320, blocks of colour
    return path


@pytest.fixture(scope="module")
def explored(tmp_path_factory, peaked_checkpoint, photo):
    """The explorer page of the photo, with every fusion and the faithfulness scores, and the
    model's own attention for it: (page, attention (L, H, N, N))."""
    out = tmp_path_factory.mktemp("explored")
    result = run(ATTENTION, "--image", photo, "--weights", peaked_checkpoint, "--html", "--head-fusion", "all",
                 "--evaluate", "--save-grid", "--output-dir", out, cwd=out)
    assert result.returncode == 0, result.stderr
    pages = [Path(line) for line in result.stdout.splitlines() if line.endswith("_explorer.html")]
    assert len(pages) == 1
    with torch.no_grad():
        _, attentions = forward(load_weights(peaked_checkpoint), to_input(read_picture(photo))[None])
    return pages[0], torch.stack(attentions)[:, 0].numpy()


def test_rows_at_8_bits_are_within_half_a_step():
    attention = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(0)).softmax(-1).numpy()
    codes, step = quantised_rows(attention)
    assert codes.dtype == np.uint8 and (codes.max(axis=-1) == 255).all()
    assert np.abs(codes * step[..., None] - attention).max() <= step.max() / 2 * (1 + 1e-6)
    assert np.allclose(step * 255, attention.max(axis=-1))


def test_the_page_holds_the_models_numbers_and_is_small(explored):
    page, attention = explored
    data = page_data(page)
    codes = decoded(data["attention"]).reshape(attention.shape)
    step = decoded(data["step"], "<f4").reshape(attention.shape[:3])
    np.testing.assert_allclose(codes * step[..., None], attention, rtol=0, atol=float(step.max()) / 2 * 1.0001)
    assert data["fusions"] == ["mean", "min", "max"] and set(data["faithfulness"]) == {"mean", "min", "max"}
    for fusion in data["fusions"]:  # the map after the last layer is the run's map, at 8 bits
        final = decoded(data["by_layer"][fusion]).reshape(L, G, G)[-1] / 255
        grid = np.load(str(page).replace("_explorer.html", f"_{fusion}_grid.npy"))
        np.testing.assert_allclose(final, grid, rtol=0, atol=1 / 510 + 1e-7)
    assert page.stat().st_size <= 3 * 2 ** 20
    text = page.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", text)  # nothing fetched from anywhere


def test_a_large_photo_gives_a_page_under_3_mb(tmp_path, peaked_checkpoint):
    pixels = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)  # noise: JPEG's worst case
    Image.fromarray(pixels).save(tmp_path / "large.png")
    result = run(GRADIENT, "--image", tmp_path / "large.png", "--category", "87", "--weights", peaked_checkpoint,
                 "--html", "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = next(Path(line) for line in result.stdout.splitlines() if line.endswith("_explorer.html"))
    assert page.stat().st_size <= 3 * 2 ** 20
    assert page_data(page)["method"].startswith("Gradient Rollout for class 87")


# ---- in a real browser ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "no chromium and chromedriver here: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("DEIT_EXPLAIN_BROWSER_TESTS") == "required":
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1100", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, page):
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(page.as_uri())
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "yes")


def at_patch(browser, canvas, row, column):
    """Actions with the mouse over the centre of patch (row, column) of a canvas."""
    from selenium.webdriver import ActionChains
    # wholly in view: Selenium measures offsets from the centre of an element's visible part
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    width, height = canvas.size["width"], canvas.size["height"]
    x = (column + 0.5) * width / G - width / 2
    y = (row + 0.5) * height / G - height / 2
    return ActionChains(browser).move_to_element_with_offset(canvas, round(x), round(y))


def click_patch(browser, canvas, row, column):
    at_patch(browser, canvas, row, column).click().perform()


def hover_patch(browser, canvas, row, column):
    at_patch(browser, canvas, row, column).perform()


def pixels(browser, canvas):
    return browser.execute_script("return arguments[0].toDataURL()", canvas)


def test_the_page_opens_from_disk_with_no_errors_and_no_requests(browser, explored, tmp_path):
    page, _ = explored
    open_page(browser, page)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    screenshot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    screenshot.save(tmp_path / "explorer.png")  # for a human to look at
    colours = len(np.unique(np.asarray(screenshot).reshape(-1, 3), axis=0))
    assert colours > 1000  # the photo and the maps, not a blank page
    assert "Top-5 classes" in browser.find_element("tag name", "body").text
    data = page_data(page)  # the faithfulness curves: one line per fusion and order, the run's points
    for order in ("positive", "negative"):
        lines = browser.find_elements("css selector", f"#curves svg.{order} polyline")
        assert len(lines) == 3
        top = max(max(s["positive"] + s["negative"]) for s in data["faithfulness"].values())
        for line, scores in zip(lines, data["faithfulness"].values()):
            ys = [float(point.split(",")[1]) for point in line.get_attribute("points").split()]
            np.testing.assert_allclose(ys, [150 - v / top * 150 for v in scores[order]], atol=0.051)


def test_clicking_a_patch_shows_where_it_attends_with_the_models_values(browser, explored):
    page, attention = explored
    open_page(browser, page)
    main = browser.find_element("id", "main")
    heads = browser.find_elements("css selector", "#heads canvas")
    assert len(heads) == H + 1
    before = [pixels(browser, c) for c in heads]
    for row, column in ((3, 5), (10, 1)):
        click_patch(browser, main, row, column)
        token = 1 + row * G + column
        assert browser.find_element("id", "token-label").text == f"patch ({row}, {column})"
        after = [pixels(browser, c) for c in heads]
        assert all(a != b for a, b in zip(after, before))  # every head panel redrawn for the new token
        before = after
        for target in ((row, column), (0, 0), (13, 13), (row, (column + 1) % G)):
            hover_patch(browser, heads[1], *target)
            text = browser.find_element("id", "readout").text
            assert text.startswith(f"layer {L}, patch ({row}, {column}) → patch ({target[0]}, {target[1]}):")
            shown = [float(v) for v in re.findall(r"head \d (\d\.\d{4})", text)]
            expected = attention[L - 1, :, token, 1 + target[0] * G + target[1]]
            tolerance = attention[L - 1, :, token].max(axis=-1) / 510 + 5e-5  # 8 bits, 4 decimals shown
            assert np.all(np.abs(np.array(shown) - expected) <= tolerance), (text, expected)
            mean = float(re.search(r"mean (\d\.\d{4})", text).group(1))
            assert abs(mean - expected.mean()) <= tolerance.max() + 5e-5
    browser.find_element("id", "cls").click()
    assert browser.find_element("id", "token-label").text == "the class token"
    hover_patch(browser, heads[0], 6, 6)
    shown = [float(v) for v in re.findall(r"head \d (\d\.\d{4})", browser.find_element("id", "readout").text)]
    expected = attention[L - 1, :, 0, 1 + 6 * G + 6]
    assert np.all(np.abs(np.array(shown) - expected) <= attention[L - 1, :, 0].max(axis=-1) / 510 + 5e-5)


def test_the_layer_slider_and_the_fusion_change_the_map(browser, explored):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    page, attention = explored
    open_page(browser, page)
    main = browser.find_element("id", "main")
    last = pixels(browser, main)
    slider = browser.find_element("id", "layer")
    slider.send_keys(Keys.HOME)  # to layer 1, as a keyboard user would
    assert browser.find_element("id", "layer-label").text == "1"
    assert pixels(browser, main) != last
    first = pixels(browser, main)
    slider.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element("id", "layer-label").text == "2" and pixels(browser, main) != first
    # the head panels follow the slider: layer 2's attention of the class token
    heads = browser.find_elements("css selector", "#heads canvas")
    hover_patch(browser, heads[2], 4, 4)
    text = browser.find_element("id", "readout").text
    assert text.startswith("layer 2, the class token → patch (4, 4):")
    shown = [float(v) for v in re.findall(r"head \d (\d\.\d{4})", text)]
    expected = attention[1, :, 0, 1 + 4 * G + 4]
    assert np.all(np.abs(np.array(shown) - expected) <= attention[1, :, 0].max(axis=-1) / 510 + 5e-5)
    at_mean = pixels(browser, main)
    Select(browser.find_element("id", "fusion")).select_by_value("min")
    assert pixels(browser, main) != at_mean
    hover_patch(browser, heads[3], 4, 4)  # the fused panel now fuses by min
    fused = float(re.search(r", min (\d\.\d{4})$", browser.find_element("id", "readout").text).group(1))
    assert abs(fused - expected.min()) <= attention[1, :, 0].max() / 510 + 5e-5


def test_a_larger_deits_page_shows_all_its_heads_with_their_values(browser, photo, tmp_path):
    """DeiT-small (--model): 6 head panels and the fused one, three to a row, each reading its
    own head's attention."""
    name = "deit_small_patch16_224"
    torch.save(peaked(random_timm_model(name=name).state_dict()), tmp_path / "small.pth")
    result = run(ATTENTION, "--image", photo, "--weights", tmp_path / "small.pth", "--model", name, "--html",
                 "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [page] = (tmp_path / "out").glob("*_explorer.html")
    with torch.no_grad():
        _, attentions = forward(load_weights(tmp_path / "small.pth", model=name), to_input(read_picture(photo))[None])
    open_page(browser, page)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    heads = browser.find_elements("css selector", "#heads canvas")
    assert len(heads) == 7 and len({c.location["x"] for c in heads}) == 3
    assert "DeiT-small · 12 layers, 6 heads" in browser.find_element("id", "method").text
    click_patch(browser, browser.find_element("id", "main"), 4, 7)
    hover_patch(browser, heads[5], 2, 9)
    shown = [float(v) for v in re.findall(r"head \d (\d\.\d{4})", browser.find_element("id", "readout").text)]
    rows = attentions[L - 1][0, :, 1 + 4 * G + 7].numpy()  # (6, N): where patch (4, 7) attends
    assert len(shown) == 6
    assert np.all(np.abs(np.array(shown) - rows[:, 1 + 2 * G + 9]) <= rows.max(axis=-1) / 510 + 5e-5)


def test_the_readout_follows_every_change_and_the_panels_say_what_they_show(browser, explored):
    """Issue #23: the hover readout was left stale by a fusion change or the class-token button;
    the slider showed no number; the chosen patch was outlined only on the map; nothing said
    that the head panels show raw attention."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    page, attention = explored
    open_page(browser, page)
    readout = lambda: browser.find_element("id", "readout").text
    assert browser.find_element("id", "layer-value").text == f"{L} of {L}"
    heads = browser.find_elements("css selector", "#heads canvas")
    click_patch(browser, browser.find_element("id", "main"), 5, 8)
    hover_patch(browser, heads[0], 2, 3)
    row = attention[L - 1, :, 1 + 5 * G + 8]  # (H, N): where patch (5, 8) attends
    tolerance = row.max() / 510 + 5e-5
    assert readout().startswith(f"layer {L}, patch (5, 8) → patch (2, 3):")
    assert abs(float(re.search(r", mean (\d\.\d{4})$", readout()).group(1)) - row[:, 1 + 2 * G + 3].mean()) <= tolerance
    # the chosen patch is outlined in white in every head panel, as on the map
    for canvas in heads:
        corner = browser.execute_script(
            "const c = arguments[0], w = c.width / 14, h = c.height / 14;"
            "return Array.from(c.getContext('2d').getImageData(Math.round(8 * w), Math.round(5 * h), 1, 1).data);",
            canvas)
        assert corner[:3] == [255, 255, 255], corner
    # a fusion change: the readout now fuses by max, for the same patches
    Select(browser.find_element("id", "fusion")).select_by_value("max")
    assert abs(float(re.search(r", max (\d\.\d{4})$", readout()).group(1)) - row[:, 1 + 2 * G + 3].max()) <= tolerance
    # the class-token button: the readout is the class token's, and the outlines are gone
    browser.find_element("id", "cls").click()
    assert readout().startswith(f"layer {L}, the class token → patch (2, 3):")
    corner = browser.execute_script(
        "const c = arguments[0], w = c.width / 14, h = c.height / 14;"
        "return Array.from(c.getContext('2d').getImageData(Math.round(8 * w), Math.round(5 * h), 1, 1).data);", heads[0])
    assert corner[:3] != [255, 255, 255]
    # the slider: its number and the readout follow it
    browser.find_element("id", "layer").send_keys(Keys.HOME)
    assert browser.find_element("id", "layer-value").text == f"1 of {L}"
    assert readout().startswith("layer 1, the class token → patch (2, 3):")
    shown = [float(v) for v in re.findall(r"head \d (\d\.\d{4})", readout())]
    np.testing.assert_allclose(shown, attention[0, :, 0, 1 + 2 * G + 3], atol=float(attention[0, :, 0].max()) / 510 + 5e-5)
    assert browser.find_element("id", "heads-say").text == "Raw attention, as the model computed it."
    assert browser.find_element("id", "main-says").text == ("The map: each layer's attention, heads fused, rolled "
                                                            "out through layers 1..l.")


def test_a_gradient_page_says_its_head_panels_are_not_weighted_by_the_gradient(browser, tmp_path, peaked_checkpoint,
                                                                                photo):
    result = run(GRADIENT, "--image", photo, "--category", "87", "--weights", peaked_checkpoint, "--html",
                 "--output-dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [page] = tmp_path.glob("*_explorer.html")
    open_page(browser, page)
    assert browser.find_element("id", "heads-say").text == ("Raw attention, as the model computed it (not weighted "
                                                            "by the gradient, unlike the map).")
    assert browser.find_element("id", "main-says").text.startswith(
        "The map: each layer's attention weighted by the gradient of the class's logit")
