"""The admin log viewer against the running stack's own log files."""

import time
import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from .conftest import screenshot

pytestmark = pytest.mark.e2e


def wait_until(check, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def log_text(browser):
    return browser.find_element(By.ID, "log-lines").text


def line_containing(browser, text):
    return browser.find_element(By.XPATH, f"//div[@id='log-lines']/div[contains(., '{text}')]")


def test_log_viewer_searches_and_follows_the_logs(stack, admin_login):
    browser = admin_login
    worker_log = stack.var_dir / "logs" / "worker.log"
    # django-q logs this from each worker process it starts.
    wait_until(
        lambda: worker_log.exists() and "ready for work" in worker_log.read_text(),
        120,
        f"the cluster never logged 'ready for work' to {worker_log}",
    )

    browser.get(stack.admin_url + "worker-logs")
    WebDriverWait(browser, 30).until(lambda b: "ready for work" in log_text(b))
    browser.find_element(By.ID, "log-search").send_keys("READY for work")
    marks = WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#log-lines mark"))
    assert {mark.text for mark in marks} == {"ready for work"}
    assert "match" in browser.find_element(By.ID, "log-matches").text
    screenshot(browser, "log-viewer-search")

    browser.find_element(By.ID, "log-search").clear()
    browser.find_element(By.ID, "log-auto-refresh").click()
    marker = f"viewer-{uuid.uuid4().hex[:12]}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S,000")
    with open(worker_log, "a") as f:
        f.write(f"{stamp} ERROR [1] [batch_test] workers.tests: <b id='{marker}'>{marker}</b> went wrong\n")
    WebDriverWait(browser, 15).until(lambda b: marker in log_text(b))
    assert "level-error" in line_containing(browser, marker).get_attribute("class")
    # Logged markup stays text.
    assert not browser.find_elements(By.ID, marker)
    assert f"<b id='{marker}'>" in log_text(browser)
    assert browser.find_element(By.ID, "log-errors").text != "0 errors"
    screenshot(browser, "log-viewer-auto-refresh")

    # Any process but the cluster logs to web.log, through the real LOGGING settings.
    web_marker = f"web-{uuid.uuid4().hex[:12]}"
    stack.manage("shell", "-c", f"import logging; logging.getLogger('workers').warning('{web_marker}')", timeout=120)
    Select(browser.find_element(By.ID, "log-name")).select_by_value("web")
    WebDriverWait(browser, 15).until(lambda b: web_marker in log_text(b))
    assert "level-warning" in line_containing(browser, web_marker).get_attribute("class")
    assert browser.find_element(By.ID, "log-download").get_attribute("href").endswith("/download?log=web")
    screenshot(browser, "log-viewer-web-log")
