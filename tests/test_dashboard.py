"""The dashboard end to end: a real `retentive serve` that has learned, forgotten and snapshotted, its JSON
views over real HTTP, and the page in headless Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from bench.service import QUICK_LEARNER, eventually, serving
from tests import services

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LABELS = {
    "astronomy": "the telescope saw a distant galaxy and a bright comet near the planet",
    "cooking": "stir the butter and garlic into the pan then bake the bread in the oven",
    "football": "the striker scored a goal and the goalkeeper saved a late penalty kick",
}
ADMIN, PREDICTOR = "dashboard-admin", "dashboard-predict"
WORST_N = 8  # what the page plots until the user picks


def call(base: str, method: str, path: str, key: str | None = ADMIN, **kwargs: object) -> httpx.Response:
    return services.call(base, method, path, key, **kwargs)


def feed(base: str, examples: list[dict[str, str]]) -> None:
    response = call(base, "POST", "/v1/feedback", json={"examples": examples})
    assert response.status_code == 202, response.text


def examples(count: int, texts: dict[str, str], tag: str) -> list[dict[str, str]]:
    """`count` examples of each label, with texts made distinct by `tag` and a number."""
    return [
        {"text": f"{text} {tag} {i}", "label": label, "id": f"{tag}-{label}-{i}"}
        for i in range(count)
        for label, text in texts.items()
    ]


def settled(base: str) -> bool:
    return call(base, "GET", "/v1/model").json()["stream_lag"] == 0


def alarmed(base: str) -> bool:
    return call(base, "GET", "/v1/evaluations").json()["alarms"] != []


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """A service that learned three labels, then forgot one: astronomy texts came back labelled cooking."""
    with serving(
        tmp_path_factory.mktemp("dashboard"),
        model=tiny_model_dir,
        api_keys=f"{ADMIN}:admin;{PREDICTOR}:predict",
        **{**QUICK_LEARNER, "snapshot_every": 5},
        eval_every=2,
        probe_fraction=0.3,
        probe_min_size=2,
        strategy="migu",
        loss="ce",
    ) as (base, _):
        # Sixty a label at 0.3 hold out 18 astronomy texts in the mean (the salt is random): far more than
        # the 7 whose going wrong is significant.
        feed(base, examples(60, LABELS, "first"))
        eventually(lambda: settled(base), 120, "the learner to apply the first feedback")
        astronomy, football = LABELS["astronomy"], LABELS["football"]
        feed(
            base, examples(40, {"cooking": astronomy}, "drift") + examples(20, {"football": football}, "more")
        )
        eventually(lambda: alarmed(base), 120, "a forgetting alarm")
        eventually(lambda: settled(base), 120, "the learner to apply the drifted feedback")
        answer_and_correct(base, examples(2, LABELS, "served"))
        yield base


def answer_and_correct(base: str, labelled: list[dict[str, str]]) -> None:
    """Predict these texts, then send their labels back naming each answer, as a labelling screen does."""
    texts = [example["text"] for example in labelled]
    answers = call(base, "POST", "/v1/predict", json={"inputs": texts}).json()["predictions"]
    served = lambda: call(base, "GET", "/v1/forgetting").json()["served"]  # noqa: E731
    eventually(lambda: served()["predictions"] >= len(texts), 30, "the answers remembered")
    named = [
        {**example, "prediction_id": a["prediction_id"]} for example, a in zip(labelled, answers, strict=True)
    ]
    feed(base, named)
    eventually(lambda: served()["joined"] == len(texts), 120, "the feedback joined to the answers")
    eventually(lambda: settled(base), 120, "the learner to apply that feedback")


# The JSON views, over HTTP: these run with or without a browser.


def test_the_accuracy_matrix_matches_the_latest_evaluation_and_marks_the_alarm(service: str) -> None:
    matrix = call(service, "GET", "/v1/evaluations").json()
    forgetting = call(service, "GET", "/v1/forgetting").json()
    assert matrix["evaluations"][-1]["evaluated_at"] == forgetting["evaluated_at"]
    # The latest column holds the sets that evaluation scored, each as /v1/forgetting reports it now.
    latest = {
        name: row[-1]
        for name, row in zip(matrix["probes"], matrix["accuracy"], strict=True)
        if row[-1] is not None
    }
    current = {probe["name"]: probe["accuracy"] for probe in forgetting["probes"]}
    assert latest and all(current[name] == pytest.approx(value, abs=5e-5) for name, value in latest.items())
    assert all(len(row) == len(matrix["evaluations"]) for row in matrix["accuracy"])
    updates = [column["updates"] for column in matrix["evaluations"]]
    assert updates == sorted(updates) and len(updates) >= 3
    assert "held_out:astronomy:w0" in {alarm["probe"] for alarm in matrix["alarms"]}
    assert len(call(service, "GET", "/v1/evaluations?limit=2").json()["evaluations"]) == 2


def test_the_version_log_lists_every_publication_newest_first(service: str) -> None:
    log = call(service, "GET", "/v1/versions").json()
    versions = [event["version"] for event in log]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert {event["kind"] for event in log} <= {"snapshot", "weights"}
    snapshots = call(service, "GET", "/v1/snapshots").json()
    # The drifted feedback made weights that failed the promotion check: on disk, never announced.
    assert any(not snapshot["promoted"] for snapshot in snapshots)
    promoted = {snapshot["id"] for snapshot in snapshots if snapshot["promoted"]}
    announced = {event["snapshot_id"] for event in log if event["kind"] == "snapshot"}
    assert promoted <= announced
    assert not announced & {snapshot["id"] for snapshot in snapshots if not snapshot["promoted"]}
    assert len(call(service, "GET", "/v1/versions?limit=1").json()) == 1


def test_the_learner_reports_its_speed_and_the_keep_rate_of_every_gated_layer(service: str) -> None:
    learner = call(service, "GET", "/v1/learner").json()
    assert learner["strategy"] == "migu" and learner["learner"] == "running" and learner["updates"] > 0
    layers = [layer["layer"] for layer in learner["layers"]]
    assert len(layers) == 12 and layers[0] == "encoder.encoder.layer.0.attention.self.query"
    assert all(0.2 <= layer["keep_rate"] <= 0.4 for layer in learner["layers"])
    assert learner["keep_rate"] == pytest.approx(0.3, abs=0.05)


def test_the_data_views_need_the_predict_scope_and_refuse_bad_limits(service: str) -> None:
    for path in ("/v1/evaluations", "/v1/versions", "/v1/learner"):
        assert call(service, "GET", path, key=None).json()["error"]["code"] == "unauthorized"
        assert call(service, "GET", path, key=PREDICTOR).status_code == 200
    refused = call(service, "GET", "/v1/evaluations?limit=0")
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "query.limit"
    assert "greater than or equal to 1" in refused.json()["error"]["message"]


def test_the_page_and_plotly_are_served_without_a_key(service: str) -> None:
    page = call(service, "GET", "/dashboard", key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "dashboard/plotly.min.js" in page.text
    plotly_js = call(service, "GET", "/dashboard/plotly.min.js", key=None)
    shipped = (files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    assert plotly_js.status_code == 200 and plotly_js.content == shipped
    assert (
        call(service, "GET", "/dashboard/dashboard.js", key=None)
        .headers["content-type"]
        .startswith("text/javascript")
    )
    missing = call(service, "GET", "/dashboard/secrets.txt", key=None)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_every_response_forbids_framing_sniffing_and_foreign_scripts(service: str) -> None:
    for method, path, key in [
        ("GET", "/dashboard", None),
        ("GET", "/dashboard/dashboard.js", None),
        ("GET", "/docs", None),
        ("GET", "/v1/forgetting", PREDICTOR),
        ("GET", "/v1/forgetting", None),
        ("POST", "/v1/feedback", ADMIN),
    ]:
        headers = call(service, method, path, key=key).headers
        policy = headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert headers["x-content-type-options"] == "nosniff", path
    assert (
        "script-src 'self' 'sha256-"
        in call(service, "GET", "/docs", key=None).headers["content-security-policy"]
    )
    assert call(service, "GET", "/redoc", key=None).status_code == 404


# The page in a real browser.


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: Chromium is not at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (the dev extra)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Dashboard:
    """One browser tab on the dashboard, with every console error it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def traces(self, chart: str) -> list[dict]:
        """The traces plotly drew in a chart: name, x, y and z of each."""
        return self.page.evaluate(
            "id => (document.getElementById(id).data || []).map(t => ({name: t.name ?? null, x: t.x ?? [],"
            " y: t.y ?? [], z: t.z ?? null}))",
            chart,
        )

    def wait_for_chart(self, chart: str) -> None:
        # Generous: while the whole suite loads both cores, the page's first draw has taken over 30 s.
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                f"() => document.getElementById('{chart}').data?.length > 0", timeout=120_000
            )
        except PlaywrightTimeout:
            pytest.fail(f"{chart} never drew: {self.state()}")

    def state(self) -> dict:
        """What the page shows: the banner, each panel's placeholder, and every error it logged."""
        shown = self.page.evaluate(
            "() => ({banner: document.getElementById('banner').textContent,"
            " placeholders: [...document.querySelectorAll('.placeholder')]"
            ".filter(p => !p.hidden).map(p => p.textContent)})"
        )
        return {**shown, "errors": self.errors}

    def use_key(self, key: str) -> None:
        self.page.fill("#api-key", key)
        self.page.click("text=Use key")


@contextlib.contextmanager
def dashboard(browser: Browser, base: str, key: str | None = None) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    if key is not None:
        context.add_init_script(f"localStorage.setItem('retentive.apiKey', {json.dumps(key)})")
    tab = Dashboard(context.new_page())
    tab.page.goto(f"{base}/dashboard")
    try:
        yield tab
    finally:
        context.close()


def test_without_a_key_the_page_says_which_key_it_needs(browser: Browser, service: str) -> None:
    with dashboard(browser, service) as tab:
        tab.page.wait_for_selector("#banner:not([hidden])")
        banner = tab.page.inner_text("#banner")
        assert "needs an API key" in banner and "predict" in banner and "this tab only" in banner
        assert tab.page.is_hidden("#empty") and tab.traces("accuracy-chart") == []

        tab.use_key(PREDICTOR)
        tab.wait_for_chart("accuracy-chart")
        assert tab.page.is_hidden("#banner")
        stored = "[sessionStorage, localStorage].map(s => s.getItem('retentive.apiKey'))"
        assert tab.page.evaluate(stored) == [PREDICTOR, None], "kept in this tab only unless remembered"
        tab.page.check("#remember-key")
        tab.use_key(PREDICTOR)
        assert tab.page.evaluate(stored) == [None, PREDICTOR]
        assert tab.page.inner_text("#key-note") == "key set, remembered in this browser"
        # The browser logs each refused request; nothing else may go wrong.
        assert all("401" in error for error in tab.errors), tab.errors


def test_with_a_key_every_chart_draws_the_service_data(
    browser: Browser, service: str, tmp_path: Path
) -> None:
    forgetting = call(service, "GET", "/v1/forgetting").json()
    matrix = call(service, "GET", "/v1/evaluations").json()
    learner = call(service, "GET", "/v1/learner").json()
    held_back = call(service, "GET", "/v1/model").json()["held_back"]
    with dashboard(browser, service, key=PREDICTOR) as tab:
        for chart in ("accuracy-chart", "matrix-chart", "timeline-chart", "gate-chart"):
            tab.wait_for_chart(chart)
        tab.page.wait_for_timeout(500)
        tab.page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

        assert tab.page.is_hidden("#banner") and tab.page.is_hidden("#empty")
        lines = {t["name"]: t for t in tab.traces("accuracy-chart") if t["name"] in matrix["probes"]}
        assert set(lines) == {probe["name"] for probe in forgetting["probes"]}
        for probe in forgetting["probes"]:
            assert lines[probe["name"]]["y"] == [point["accuracy"] for point in probe["history"]]
        best = next(t for t in tab.traces("accuracy-chart") if t["name"] == "held_out:astronomy:w0 best")
        assert best["y"] == sorted(best["y"]) and best["y"][-1] == 1.0
        [alarms] = [t for t in tab.traces("accuracy-chart") if t["name"] == "alarm fired"]
        assert len(alarms["x"]) == len(matrix["alarms"]) >= 1

        [heatmap] = tab.traces("matrix-chart")
        assert heatmap["y"] == matrix["probes"] and heatmap["z"] == matrix["accuracy"]
        drawn = {t["name"]: len(t["x"]) for t in tab.traces("timeline-chart") if t["name"]}
        assert drawn["snapshot"] >= 2 and drawn["rollback"] == 0
        [bars] = tab.traces("gate-chart")
        assert bars["y"] == [layer["keep_rate"] for layer in learner["layers"]]
        assert bars["x"][0] == "layer.0.attention.self.query"
        assert tab.page.inner_text("#t-alarms") == str(len(forgetting["alarms"]))
        served = forgetting["served"]
        assert tab.page.inner_text("#t-served") == f"{served['last_1000']['accuracy']:.3f}"
        assert tab.page.inner_text("#t-coverage") == f"{served['coverage']:.3f}"
        assert tab.page.inner_text("#t-learner") == "running"
        # The drifted feedback left weights that fail the promotion check: the page says so, and why.
        assert held_back is not None
        assert tab.page.inner_text("#t-promotion") == "held back"
        assert tab.page.get_attribute("#t-promotion", "title").startswith(held_back["reason"])
        assert tab.errors == []


def test_the_rollback_button_needs_an_admin_key_and_then_rolls_back(browser: Browser, service: str) -> None:
    target = call(service, "GET", "/v1/snapshots").json()[-1]
    button = f"#snapshot-table tr[title^='{target['id']}'] button"
    with dashboard(browser, service, key=PREDICTOR) as tab:
        tab.page.on("dialog", lambda dialog: dialog.accept())
        tab.wait_for_chart("timeline-chart")
        tab.page.click(button)
        tab.page.wait_for_selector("#rollback-note.error")
        assert "admin scope" in tab.page.inner_text("#rollback-note")
        assert not any(event["rolled_back_to"] for event in call(service, "GET", "/v1/versions").json())

        tab.use_key(ADMIN)
        tab.wait_for_chart("timeline-chart")
        tab.page.click(button)
        tab.page.wait_for_selector("#rollback-note.done")

        def rolled_back() -> bool:
            return any(
                event["rolled_back_to"] == target["id"]
                for event in call(service, "GET", "/v1/versions").json()
            )

        eventually(rolled_back, 60, "the rollback in the version log")
        drawn = (
            "document.getElementById('timeline-chart').data.some(t => t.name === 'rollback' && t.x.length)"
        )
        tab.page.wait_for_function(f"() => {drawn}", timeout=30_000)
        [marker] = [t for t in tab.traces("timeline-chart") if t["name"] == "rollback"]
        assert len(marker["x"]) == 1
        assert tab.page.locator("#timeline-chart text", has_text=f"↩ v{target['version']}").count() == 1
        assert [e for e in tab.errors if "401" not in e and "403" not in e] == []


def test_fifty_probes_stay_readable(browser: Browser, service: str, tmp_path: Path) -> None:
    for number in range(50):
        examples = [{"text": f"{text} probe {number}", "label": label} for label, text in LABELS.items()]
        assert call(service, "PUT", f"/v1/probes/golden-{number:02d}", json={"examples": examples}).is_success

    def evaluated() -> bool:
        return len(call(service, "GET", "/v1/evaluations?limit=1").json()["probes"]) >= 53

    eventually(evaluated, 120, "an evaluation of all 53 probes")
    probes = call(service, "GET", "/v1/evaluations?limit=1").json()["probes"]
    with dashboard(browser, service, key=PREDICTOR) as tab:
        tab.page.wait_for_function(
            f"() => document.getElementById('matrix-chart').data?.[0]?.y.length >= {len(probes)}",
            timeout=30_000,
        )
        tab.page.wait_for_timeout(500)
        tab.page.screenshot(path=tmp_path / "fifty-probes.png", full_page=True)

        [heatmap] = tab.traces("matrix-chart")
        assert len(heatmap["y"]) == len(heatmap["z"]) == len(probes)
        # One row of at least 12 px per probe, so no probe name overlaps the next.
        assert tab.page.locator("#matrix-chart").bounding_box()["height"] >= 12 * len(probes)
        assert tab.page.locator("#probe-table tbody tr").count() == len(probes)

        def plotted() -> list[str]:
            names = [t["name"] for t in tab.traces("accuracy-chart")]
            return [name for name in names if name in probes]

        assert len(plotted()) == WORST_N
        tab.page.locator("#probe-table tbody tr").nth(20).locator("input").click()
        assert len(plotted()) == WORST_N + 1 and tab.page.is_visible("#reset-pick")
        tab.page.fill("#worst-n", "50")
        assert len(plotted()) == 50 and tab.page.is_hidden("#reset-pick")
        # Even with 50 lines the legend sits below the plot and the plot keeps its height.
        plot = tab.page.locator("#accuracy-chart .nsewdrag").bounding_box()
        legend = tab.page.locator("#accuracy-chart .legend").bounding_box()
        assert plot["height"] >= 250 and legend["y"] >= plot["y"] + plot["height"]
        tab.page.fill("#worst-n", "3")
        assert len(plotted()) == 3
        assert tab.errors == []


def test_a_fresh_server_says_how_to_get_data(browser: Browser, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "fresh").mkdir()
    with serving(tmp_path / "fresh", model=tiny_model_dir) as (base, _), dashboard(browser, base) as tab:
        tab.page.wait_for_selector("#empty:not([hidden])")
        tab.page.wait_for_function("() => document.getElementById('refreshed').textContent !== ''")
        tab.page.screenshot(path=tmp_path / "empty.png", full_page=True)
        empty = tab.page.inner_text("#empty")
        assert "No data yet" in empty and "POST /v1/feedback" in empty and f"{base}/v1/feedback" in empty
        for chart in ("accuracy-chart", "matrix-chart", "timeline-chart", "gate-chart"):
            assert tab.page.is_hidden(f"#{chart}") and tab.traces(chart) == []
        assert tab.page.is_hidden("#banner") and tab.page.inner_text("#t-version") == "none"
        assert tab.errors == []


NO_FIGURE = "\u2013"  # what the page shows for a figure not measured yet


def test_a_probe_set_registered_before_any_feedback_is_listed_then_evaluated(
    browser: Browser, tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "early").mkdir()
    golden = [{"text": text, "label": label} for label, text in LABELS.items()]
    with serving(tmp_path / "early", model=tiny_model_dir) as (base, _), dashboard(browser, base) as tab:
        assert call(base, "PUT", "/v1/probes/golden", json={"examples": golden}).status_code == 201
        [listed] = call(base, "GET", "/v1/probes").json()
        assert (listed["name"], listed["accuracy"]) == ("golden", None)
        row = tab.page.locator("#probe-table tbody tr", has_text="golden")
        row.wait_for(timeout=30_000)
        assert row.locator("td").nth(3).inner_text() == NO_FIGURE

        feed(base, examples(4, LABELS, "first"))

        def evaluated() -> bool:
            return call(base, "GET", "/v1/probes").json()[0]["accuracy"] is not None

        eventually(evaluated, 120, "the registered probe set evaluated once the model knows labels")
        tab.page.wait_for_function(
            "() => [...document.querySelectorAll('#probe-table tbody tr')]"
            f".some(r => r.cells[1].textContent === 'golden' && r.cells[3].textContent !== '{NO_FIGURE}')",
            timeout=30_000,
        )
        assert tab.errors == []


def test_the_api_docs_render_from_the_service_alone(browser: Browser, service: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    tab = Dashboard(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(f"{service}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=120_000)
        paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
        assert "/v1/predict" in [path.replace("\u200b", "") for path in paths]
        assert tab.errors == [], "no script or style was refused by the page's policy"
        assert requested and all(url.startswith(service) for url in requested), requested
    finally:
        context.close()
