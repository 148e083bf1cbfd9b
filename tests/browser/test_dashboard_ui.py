"""The project dashboard in Debian's Chromium: rita reviews project A and opens its dashboard, whose charts
(Chart.js, vendored) must draw under the site's Content-Security-Policy with no error. alice and carol
label A; adam administers it and marks a gold task."""
from __future__ import annotations

import pytest

from annotation import gold, services
from tests.factories import best_first, make_ranking_task

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHARTS = ["chart-alpha", "chart-bias", "chart-k", "chart-lengths"]


@pytest.fixture
def labelled(project_a, users):
    project_a.overlap = 2
    project_a.save()
    for i in range(3):
        task = make_ranking_task(project_a)
        in_order = best_first(task)
        services.submit_ranking(labeler=users["alice"], task=task, entries=in_order, seconds_spent=12)
        other = in_order if i else [{**e, "rank": len(in_order) - e["rank"] + 1} for e in in_order]
        services.submit_ranking(labeler=users["carol"], task=task, entries=other, seconds_spent=20)
    task = make_ranking_task(project_a)
    known = {str(e["candidate"]): e["rank"] for e in best_first(task)}
    gold.mark_gold(admin=users["adam"], task=task, gold_ranks=known)
    services.submit_ranking(labeler=users["alice"], task=task, entries=best_first(task), seconds_spent=9)
    return project_a


def test_the_dashboard_draws_its_charts_under_the_content_security_policy(login, labelled):
    page = login("rita")
    console = []
    page.on("console", lambda message: console.append(message.text)
            if message.type == "error" or "Content Security Policy" in message.text else None)
    response = page.goto(f"/manage/projects/{labelled.pk}/dashboard/")
    assert response.status == 200 and "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("figure.chart[data-rendered='true'] >> nth=3", state="attached", timeout=15000)
    drawn = page.evaluate("ids => ids.map(id => { const chart = Chart.getChart(id);"
                          " return Boolean(chart) && chart.width > 0 && chart.data.datasets.length > 0; })", CHARTS)
    assert drawn == [True] * len(CHARTS)
    alphas = page.evaluate("() => Chart.getChart('chart-alpha').data.datasets[0].data")
    assert len(alphas) == 1 and alphas[0] is not None  # round 1: alice and carol ranked the same tasks
    assert page.inner_text("#project-alpha") != "–"
    assert page.locator(".dashboard-labelers tbody tr").count() == 2  # alice and carol
    assert console == [] and page.problems == []
