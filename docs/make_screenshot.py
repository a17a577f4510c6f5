#!/usr/bin/env python3
"""Regenerate docs/explorer.png, README's picture of the explorer page: python docs/make_screenshot.py

Runs attention_rollout.py --html on the planted scene of docs/make_figures.py with the planted
model, opens the page in headless Chromium (Debian's chromium and chromium-driver, and selenium
from the test extra), clicks patch (3, 3), points at the same patch in the fused panel,
and saves what the browser shows.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "docs"), str(ROOT / "tests")]

from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

from make_figures import HEIGHT, SQUARES, WIDTH  # noqa: E402
from planted import draw_scene, planted_state_dict  # noqa: E402
from test_explorer import click_patch, hover_patch, open_page  # noqa: E402

OUT = ROOT / "docs" / "explorer.png"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_file(planted_state_dict(), tmp / "planted.safetensors")
        Image.fromarray(draw_scene(HEIGHT, WIDTH, SQUARES)).save(tmp / "scene.png")
        subprocess.run([sys.executable, str(ROOT / "attention_rollout.py"), "--image", tmp / "scene.png",
                        "--weights", tmp / "planted.safetensors", "--html", "--head-fusion", "all",
                        "--output-dir", tmp / "out"], check=True, capture_output=True)
        page = next((tmp / "out").glob("*_explorer.html"))
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--window-size=1040,800", "--hide-scrollbars"):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            open_page(browser, page)
            click_patch(browser, browser.find_element("id", "main"), 3, 3)
            hover_patch(browser, browser.find_elements("css selector", "#heads canvas")[-1], 3, 3)
            browser.execute_script("window.scrollTo(0, 0)")
            shot = tmp / "shot.png"
            browser.save_screenshot(str(shot))
        finally:
            browser.quit()
        Image.open(shot).convert("RGB").quantize(64).save(OUT, optimize=True)
    print(f"{OUT}  {OUT.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
