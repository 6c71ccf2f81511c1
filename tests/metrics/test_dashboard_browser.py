"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
installed by .ci/run) driven by Selenium. A staff user logs in, opens the dashboard, and every
chart must have drawn marks with a real size; a screenshot is saved under the test's tmp dir
(and to ``$CONVO_DASHBOARD_SCREENSHOT`` when set: that is how docs/img/dashboard.png was made).

Without the browser the test is skipped locally and fails under CI=true, like the Redis tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.metrics.test_dashboard import CHART_KEYS

pytestmark = pytest.mark.django_db(transaction=True)

# Per chart: how many marks (bars, points, lines) the browser laid out with a non-empty box.
DRAWN_MARKS_JS = """
const result = {};
for (const figure of document.querySelectorAll('figure.chart')) {
  const marks = figure.querySelectorAll('svg .bar, svg .point, svg .line');
  result[figure.dataset.chart] = Array.from(marks).filter(mark => {
    const box = mark.getBBox();
    return box.width > 0 || box.height > 0;
  }).length;
}
return result;
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium and chromedriver must be installed when CI=true (.ci/run installs them)")
        pytest.skip("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(argument)
    # An explicit driver and browser: Selenium Manager never runs, so nothing is downloaded.
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def test_staff_user_sees_every_chart_drawn(browser, live_server, staff_user, dashboard_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{live_server.url}/admin/login/?next=/admin/dashboard/")
    browser.find_element(By.NAME, "username").send_keys("staff")
    browser.find_element(By.NAME, "password").send_keys("staff-pass-123")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "dashboard-filter")))

    drawn = browser.execute_script(DRAWN_MARKS_JS)
    assert sorted(drawn) == sorted(CHART_KEYS)
    assert all(count > 0 for count in drawn.values()), drawn

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if target := os.environ.get("CONVO_DASHBOARD_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)

    # The tenant filter is a real form: choosing one tenant reloads the page narrowed to it.
    browser.get(f"{live_server.url}/admin/dashboard/?tenant={dashboard_data.other.pk}")
    drawn = browser.execute_script(DRAWN_MARKS_JS)
    assert drawn["ingest"] > 0
    assert drawn["feedback"] == 0  # Globex has no feedback: "No data yet", no marks
