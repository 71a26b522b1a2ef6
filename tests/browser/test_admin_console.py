"""The operations console in a real browser: the heartbeat card follows the cluster
live (a stopped worker leaves its rows for the stopped-or-lost link), and the
Restart action brings up a new worker process."""

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from .conftest import screenshot

CARD_ROWS = """
return [...document.querySelectorAll('#heartbeat-card tr.heartbeat-worker')]
    .map(tr => ({name: tr.dataset.worker, pid: Number(tr.dataset.pid), freshness: tr.dataset.freshness}));
"""


def card_rows(browser):
    return browser.execute_script(CARD_ROWS)


def wait_for_card(browser, predicate, timeout, message):
    """Waits for a card row matching `predicate`, reading the DOM the page keeps
    re-rendering, and returns that row."""
    WebDriverWait(browser, timeout, poll_frequency=0.5).until(
        lambda b: any(predicate(row) for row in card_rows(b)), message
    )
    return next(row for row in card_rows(browser) if predicate(row))


def shoot(browser, name, css="#heartbeat-card"):
    browser.execute_script("document.querySelector(arguments[0]).scrollIntoView();", css)
    screenshot(browser, name)


def online(row):
    return row["freshness"] == "online"


def test_heartbeat_card_follows_the_worker_without_a_reload(stack, admin_login):
    browser = admin_login
    browser.get(stack.admin_url)
    worker = wait_for_card(browser, online, 120, "no worker came online on the card")
    shoot(browser, "admin-heartbeat-online")
    # A reload would drop this marker.
    browser.execute_script("window.sameDocument = true;")

    stack.stop_worker()
    try:
        # A worker that stopped cleanly leaves the card's rows for its stopped-or-lost
        # link (the list's "show" filter); one that had to be killed stays, offline.
        WebDriverWait(browser, 30, poll_frequency=0.5).until(
            lambda b: (
                any(row["name"] == worker["name"] and row["freshness"] == "offline" for row in card_rows(b))
                or (
                    all(row["name"] != worker["name"] for row in card_rows(b))
                    and "stopped or lost" in b.find_element(By.CSS_SELECTOR, "#heartbeat-card .heartbeat-others").text
                )
            ),
            "the card did not follow the stopped worker",
        )
        assert browser.execute_script("return window.sameDocument;") is True
        shoot(browser, "admin-heartbeat-stopped")
    finally:
        # Later tests need a worker.
        stack.start_worker()
    wait_for_card(
        browser,
        lambda row: online(row) and row["pid"] != worker["pid"],
        120,
        "the started worker did not come online on the card",
    )


def test_restart_action_brings_up_a_new_worker_process(stack, admin_login):
    browser = admin_login
    browser.get(stack.admin_url)
    wait_for_card(browser, online, 120, "no worker online before the restart")

    browser.get(stack.admin_url + "workers/worker/?freshness=online")
    old_pid = int(browser.find_element(By.CSS_SELECTOR, "#result_list td.field-pid").text)
    browser.find_element(By.CSS_SELECTOR, "#result_list input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("restart_workers")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()

    message = WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist li")))
    shoot(browser, "admin-worker-restart", ".messagelist")
    assert "success" in message.get_attribute("class"), message.text
    assert f"restarting pid {old_pid}" in message.text

    browser.get(stack.admin_url)
    wait_for_card(
        browser, lambda row: online(row) and row["pid"] != old_pid, 30, "no new worker process came online in 30 s"
    )
    shoot(browser, "admin-worker-restarted")
