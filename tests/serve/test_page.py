"""The web page of ``effnet serve`` in a real browser: Debian's headless Chromium driven by Selenium
uploads a real photo and the top-5 read off the page equal the API's answer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data

from helpers.serve import CLEAN_EXIT, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CATS = {"tiger cat", "tabby", "Egyptian cat"}
WAIT_S = 60

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="no browser: install Debian's chromium and chromium-driver "
                                       "(apt-get install chromium chromium-driver; ./run.sh test does it as root)")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    process = ServerProcess(["--model", "efficientnet_lite0"], folder / "server.log")
    process.wait_ready()
    yield process
    assert process.stop() in CLEAN_EXIT, process.output()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def results_for(browser, name: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(driver):
        cards = driver.find_elements(By.CSS_SELECTOR, f'.result[data-file="{name}"]')
        return cards[0] if cards and "pending" not in cards[0].get_attribute("class") else False

    return WebDriverWait(browser, WAIT_S).until(finished)


def test_page_shows_the_top5_of_a_photo_as_the_api_does(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=92)
    not_a_photo = tmp_path / "notes.png"
    shutil.copyfile(__file__, not_a_photo)

    browser.get(server.url + "/")
    WebDriverWait(browser, WAIT_S).until(lambda d: "efficientnet_lite0" in d.find_element(By.ID, "model").text)
    assert "torch, 1000 classes, 224 px" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    card = results_for(browser, photo.name)
    assert "done" in card.get_attribute("class"), card.text
    labels = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".bar .label")]
    percentages = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".bar .pct")]
    widths = [e.get_attribute("style") for e in card.find_elements(By.CSS_SELECTOR, ".bar .fill")]
    assert " ms (" in card.find_element(By.CSS_SELECTOR, ".time").text

    api = httpx.post(server.url + "/v1/predict", params={"top_k": 5}, timeout=WAIT_S,
                     files=[("file", (photo.name, photo.read_bytes(), "image/jpeg"))]).json()
    top5 = api["predictions"][0]["top_k"]
    assert labels == [c["class_name"] for c in top5] and labels[0] in CATS
    assert percentages == [f"{100 * c['probability']:.1f}%" for c in top5]
    assert widths[0] == f"width: {100 * top5[0]['probability']:.1f}%;"

    browser.find_element(By.ID, "file-input").send_keys(str(not_a_photo))
    failed = results_for(browser, not_a_photo.name)
    assert "error" in failed.get_attribute("class")
    assert "notes.png: not an image file" in failed.find_element(By.CSS_SELECTOR, ".status").text
