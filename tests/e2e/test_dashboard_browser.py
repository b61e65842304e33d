"""The dashboard in a real headless browser (Debian's chromium, driven by selenium) against a
live embedded server: the loss curve grows while a job trains, the finished job shows its
evaluation curves and confusion matrix, a file shows its validation report with line numbers,
an image or audio archive shows a few examples per class (thumbnails, players), an image job
shows its misclassified validation pictures beside the confusion matrix, the playground
predicts, and the cancel button cancels. Screenshots go to test-artifacts/.

`make test` installs chromium when it can (scripts/install-browser.sh); without it this skips.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest

from tests.support import live
from tests.support.data import sentiment_rows, write_jsonl
from tests.support.media import digit_images, folder_zip, tones
from tests.support.models import build_tiny_vit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[live.LiveServer]:
    # the shared tiny text models, and an image model for the media pages
    models = tmp_path_factory.mktemp("dashboard-models")
    for model in tiny_models.iterdir():
        (models / model.name).symlink_to(model, target_is_directory=True)
    build_tiny_vit(models / "tiny-vit")
    with live.embedded(tmp_path_factory.mktemp("dashboard") / "data", models) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "chromium and chromedriver are not installed: run scripts/install-browser.sh "
            "(apt-get install chromium chromium-driver) to run the dashboard's browser test"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1400,1250",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(
    what: str, probe: Callable[[], T | None], timeout: float = 120.0, every: float = 0.25
) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the element may be re-rendered between two reads
            last_error = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def count(driver: Any, series: str) -> int:
    value = driver.execute_script(
        "const p = document.querySelector(arguments[0]); return p ? Number(p.dataset.count) : 0;",
        f'#loss-chart path[data-series="{series}"]',
    )
    return int(value or 0)


def text_of(driver: Any, selector: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            selector,
        )
    )


def upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        response = client.post("/v1/files", files={"file": (path.name, fh)})
    assert response.status_code == 200, response.text
    return dict(response.json())


def start_job(client: httpx.Client, file_id: str, **hyperparameters: Any) -> str:
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "tiny-bert",
            "training_file": file_id,
            "seed": 1,
            "suffix": "browser",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_dashboard_follows_a_job_live(
    server: live.LiveServer, browser: Any, tmp_path: Path
) -> None:
    with server.client() as client:
        file = upload(client, write_jsonl(tmp_path / "train.jsonl", sentiment_rows(240)))
        job_id = start_job(
            client, file["id"], n_epochs=3, batch_size=4, learning_rate=3e-3, logging_steps=1
        )

    browser.get(f"{server.base_url}/#/jobs")
    wait("the job in the jobs list", lambda: job_id in text_of(browser, "#jobs-table"))
    shot(browser, "01-jobs")

    browser.get(f"{server.base_url}/#/jobs/{job_id}")
    first = wait("the first points of the loss curve", lambda: count(browser, "train_loss"), 240)
    grown = wait(
        "the loss curve to grow while the job runs",
        lambda: count(browser, "train_loss") > first and count(browser, "train_loss"),
        240,
    )
    assert grown > first
    assert "running" in text_of(browser, ".page-head .pill").lower() or grown > first
    shot(browser, "02-job-training")

    wait(
        "the job to succeed",
        lambda: "succeeded" in text_of(browser, ".page-head .pill").lower(),
        300,
    )
    time.sleep(0.5)  # the last render of the poll that saw it
    final = count(browser, "train_loss")
    assert final >= grown
    eval_points = browser.execute_script(
        "return [...document.querySelectorAll('#eval-chart path[data-series]')]"
        ".map(p => [p.dataset.series, Number(p.dataset.count)]);"
    )
    assert ["accuracy", 3] in eval_points, eval_points
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#confusion-card table.matrix td')]"
        ".map(td => Number(td.textContent));"
    )
    assert len(cells) == 4 and sum(cells) > 0, cells
    assert "succeeded" in text_of(browser, "#events").lower()
    assert "100%" in text_of(browser, "#progress-stat")
    # the job says which checkpoint its model is: by default the final one
    details = text_of(browser, "dl.details")
    assert "Exported checkpoint" in details and "the final model" in details, details
    assert not browser.find_elements("css selector", "#cancel-job")
    shot(browser, "03-job-succeeded")
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    time.sleep(0.3)
    shot(browser, "04-job-details")


def test_file_report_models_and_playground(
    server: live.LiveServer, browser: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "".join(f'{{"text": "row {i}", "label": "a"}}\n' for i in range(12))
        + '{"text": 3}\nnot json\n'
    )
    with server.client() as client:
        report = upload(client, bad)
        assert report["status"] == "error"
        file = upload(client, write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32)))
        job_id = start_job(client, file["id"], n_epochs=1, batch_size=8)
        done = live.wait_for(
            client, f"/v1/fine_tuning/jobs/{job_id}", {"succeeded", "failed", "cancelled"}
        )
        assert done["status"] == "succeeded", done
        model = done["fine_tuned_model"]

    browser.get(f"{server.base_url}/#/files/{report['id']}")
    problems = wait("the validation report", lambda: text_of(browser, "#file-errors"))
    assert "13" in problems and "14" in problems, problems  # the bad lines, by number
    assert text_of(browser, "#file-problem")
    shot(browser, "05-file-report")

    browser.get(f"{server.base_url}/#/files")
    wait("the files list", lambda: report["id"] in text_of(browser, "#files-table"))
    shot(browser, "06-files")

    browser.get(f"{server.base_url}/#/models")
    wait("the tuned model", lambda: model in text_of(browser, "#models-table"))
    shot(browser, "07-models")
    row = wait(
        "the tuned model's row",
        lambda: [
            r
            for r in browser.find_elements("css selector", "#models-table tbody tr")
            if model in r.text
        ],
    )[0]
    row.find_element("xpath", ".//button[text()='Deploy']").click()
    wait(
        "the deployment to be ready",
        lambda: "ready" in text_of(browser, "#deployments-table").lower(),
        180,
    )
    wait(
        "the playground's deployment",
        lambda: browser.execute_script(
            "return document.querySelector('#playground-deployment').value"
        ),
    )
    browser.find_element("css selector", "#playground-input").send_keys(
        "the movie was great and wonderful\nthis was awful and sad"
    )
    results = predict_in_playground(browser, 2)
    assert "positive" in results and "negative" in results and "%" in results
    shot(browser, "08-playground")


def test_new_job_form_and_cancel_button(
    server: live.LiveServer, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    with server.client() as client:
        file = upload(client, write_jsonl(tmp_path / "train.jsonl", sentiment_rows(64)))
    browser.get(f"{server.base_url}/#/jobs")
    wait("the jobs page", lambda: browser.find_elements("xpath", "//button[text()='New job']"))[
        0
    ].click()
    model = wait("the form", lambda: browser.find_elements("css selector", "select[name=model]"))
    Select(model[0]).select_by_value("tiny-bert")
    Select(browser.find_element("css selector", "select[name=training_file]")).select_by_value(
        file["id"]
    )
    browser.find_element("css selector", "input[name=n_epochs]").send_keys("100")
    browser.find_element("css selector", "input[name=batch_size]").send_keys("2")
    browser.find_element("css selector", "input[name=suffix]").send_keys("form")
    shot(browser, "09-new-job-form")
    browser.find_element("xpath", "//button[text()='Start training']").click()
    job_id = wait(
        "the new job's page",
        lambda: (
            browser.current_url.split("#/jobs/")[-1]
            if "#/jobs/ftjob-" in browser.current_url
            else None
        ),
    )
    with server.client() as client:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["model"] == "tiny-bert" and job["suffix"] == "form", job
    assert job["hyperparameters"]["n_epochs"] == 100 and job["hyperparameters"]["batch_size"] == 2

    button = wait("the cancel button", lambda: browser.find_elements("css selector", "#cancel-job"))
    button[0].click()
    browser.switch_to.alert.accept()
    wait(
        "the job to be cancelled",
        lambda: "cancelled" in text_of(browser, ".page-head .pill").lower(),
        120,
    )
    assert not browser.find_elements("css selector", "#cancel-job")
    shot(browser, "10-job-cancelled")


def test_asks_for_the_api_key_when_the_server_has_keys(
    browser: Any, tmp_path: Path, tiny_models: Path
) -> None:
    key = "tun-dashboard-test-key-0123456789"
    with live.embedded(tmp_path / "data", tiny_models, TUNERY_BOOTSTRAP_API_KEY=key) as srv:
        with srv.client() as client:
            response = client.get("/v1/files")
            assert response.status_code == 401
        browser.get(f"{srv.base_url}/#/files")
        wait(
            "the key dialog",
            lambda: browser.execute_script("return document.querySelector('#key-dialog').open"),
        )
        shot(browser, "11-api-key")
        browser.find_element("css selector", "#key-input").send_keys(key)
        browser.find_element("css selector", "#key-form button[value=save]").click()
        wait("the files list", lambda: "No files yet" in text_of(browser, "#files-table"))
        assert browser.execute_script("return localStorage.getItem('tunery_api_key')") == key
        browser.execute_script("localStorage.removeItem('tunery_api_key')")


def test_sweep_page_shows_trials_over_time_and_parameters(
    server: live.LiveServer, browser: Any, tmp_path: Path
) -> None:
    with server.client() as client:
        file = upload(client, write_jsonl(tmp_path / "train.jsonl", sentiment_rows(120)))
        response = client.post(
            "/v1/fine_tuning/sweeps",
            json={
                "job": {
                    "model": "tiny-bert",
                    "training_file": file["id"],
                    "seed": 1,
                    "method": {
                        "type": "supervised",
                        "supervised": {
                            "hyperparameters": {"n_epochs": 2, "batch_size": 8, "eval_steps": 5}
                        },
                    },
                },
                "search_space": {
                    "method.supervised.hyperparameters.learning_rate": {
                        "type": "log_uniform",
                        "low": 1e-4,
                        "high": 1e-2,
                    },
                    "training_type.r": {"type": "choice", "values": [4, 8]},
                },
                "objective": {"metric": "eval_loss"},
                "n_trials": 2,
                "max_parallel": 1,
                "pruner": "none",
                "seed": 2,
            },
        )
        assert response.status_code == 200, response.text
        sweep_id = response.json()["id"]

    browser.get(f"{server.base_url}/#/sweeps")
    wait("the sweep in the sweeps list", lambda: sweep_id in text_of(browser, "#sweeps-table"))
    browser.get(f"{server.base_url}/#/sweeps/{sweep_id}")
    wait(
        "the first trial's evaluations on the chart",
        lambda: browser.execute_script(
            "const p = document.querySelector('#sweep-chart path[data-series=\"trial 0\"]');"
            "return p ? Number(p.dataset.count) : 0;"
        ),
        240,
    )
    shot(browser, "09-sweep-running")
    wait(
        "the sweep to succeed",
        lambda: "succeeded" in text_of(browser, ".page-head .pill").lower(),
        400,
    )
    time.sleep(0.5)
    trials = browser.execute_script(
        "return [...document.querySelectorAll('#trials-table tbody tr')].map(r => r.dataset.state);"
    )
    assert trials == ["complete", "complete"], trials
    assert "★" in text_of(browser, "#trials-table tr.best")
    scatter = browser.execute_script(
        "return [...document.querySelectorAll('#param-charts .chart')].map(c => [c.dataset.param,"
        " Number((c.querySelector('path[data-series=\"complete\"]') || {dataset: {}})"
        ".dataset.count || 0)]);"
    )
    assert sorted(scatter) == [
        ["method.supervised.hyperparameters.learning_rate", 2],
        ["training_type.r", 2],
    ], scatter
    assert "Sweep succeeded" in text_of(browser, "#sweep-events")
    assert "2 / 2" in text_of(browser, "#trials-stat")
    shot(browser, "10-sweep-succeeded")


def predict_in_playground(browser: Any, count: int) -> str:
    """Click Predict; the results' text once `count` predictions are shown."""
    browser.find_element("css selector", "#playground-run").click()
    return cast(
        str,
        wait(
            f"{count} prediction(s) in the playground",
            lambda: (
                len(browser.find_elements("css selector", "#playground-results .prediction"))
                == count
                and text_of(browser, "#playground-results")
            ),
            120,
        ),
    )


def loaded_media(driver: Any, selector: str) -> list[dict[str, Any]]:
    """The <img>/<audio> elements under selector that show their example: decoded pictures
    (naturalWidth) and sounds whose metadata loaded (duration)."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(m => ({"
            " file: m.closest('figure').dataset.file || m.title, loaded: m.dataset.loaded,"
            " width: m.naturalWidth || 0, duration: m.duration || 0}));",
            selector,
        )
    )


def all_shown(
    driver: Any, selector: str, count: int, ok: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]] | None:
    """The media under selector once there are `count` and each is `ok`, else None."""
    shown = loaded_media(driver, selector)
    return shown if len(shown) == count and all(m["loaded"] and ok(m) for m in shown) else None


def test_media_files_show_samples_and_a_job_its_misclassified_pictures(
    server: live.LiveServer, browser: Any, tmp_path: Path
) -> None:
    pictures = folder_zip(tmp_path / "digits.zip", digit_images(8, (0, 1, 2)))
    sounds = folder_zip(tmp_path / "tones.zip", tones(5, ("low", "high"), seconds=0.2), ".wav")
    with server.client() as client:
        images = upload(client, pictures)
        audio = upload(client, sounds)
        assert images["status"] == audio["status"] == "processed", (images, audio)
        # a job that barely trains (a tiny learning rate): it gets pictures wrong
        response = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "tiny-vit",
                "training_file": images["id"],
                "seed": 1,
                "training_type": {"type": "full"},
                "method": {
                    "type": "supervised",
                    "supervised": {
                        "hyperparameters": {
                            "n_epochs": 1,
                            "batch_size": 8,
                            "learning_rate": 1e-7,
                            "validation_split": 0.25,
                            "augmentation": False,
                        }
                    },
                },
            },
        )
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]

    browser.get(f"{server.base_url}/#/files/{images['id']}")
    thumbs = wait(
        "six decoded thumbnails of each of the 3 classes",
        lambda: all_shown(browser, "#file-samples img", 18, lambda m: m["width"] == 32),
    )
    assert len(thumbs) == 18
    classes = browser.execute_script(
        "return [...document.querySelectorAll('#file-samples .sample-class')]"
        ".map(c => [c.dataset.label, c.querySelectorAll('img').length]);"
    )
    assert classes == [["0", 6], ["1", 6], ["2", 6]], classes
    assert "null" not in text_of(browser, "#app")
    shot(browser, "12-image-samples")

    browser.get(f"{server.base_url}/#/files/{audio['id']}")
    players = wait(
        "a loaded player per sound (5 per class, under the 6 shown)",
        lambda: all_shown(browser, "#file-samples audio", 10, lambda m: m["duration"] > 0.1),
    )
    assert all(abs(p["duration"] - 0.2) < 0.05 for p in players), players
    shot(browser, "13-audio-samples")

    with server.client() as client:
        done = live.wait_for(
            client, f"/v1/fine_tuning/jobs/{job_id}", {"succeeded", "failed", "cancelled"}
        )
        assert done["status"] == "succeeded", done
        metrics = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()
    wrong = metrics["evaluations"][-1]["misclassified"]
    assert wrong, metrics["evaluations"][-1]
    browser.get(f"{server.base_url}/#/jobs/{job_id}")
    shown = wait(
        "the misclassified pictures beside the confusion matrix",
        lambda: all_shown(
            browser, "#confusion-card #misclassified img", len(wrong), lambda m: m["width"] == 32
        ),
    )
    assert [m["file"] for m in shown] == [w["file"] for w in wrong]
    captions = browser.execute_script(
        "return [...document.querySelectorAll('#misclassified figcaption')].map(c => ["
        "c.querySelector('.true-label').textContent, c.querySelector('.predicted-label')"
        ".textContent]);"
    )
    assert captions == [[w["label"], w["predicted"]] for w in wrong], captions
    assert all(label != predicted for label, predicted in captions)
    shot(browser, "14-job-misclassified")

    # the playground follows the model's `predicts`: a picture chosen as a file, no text box
    with server.client() as client:
        deployed = client.post("/v1/deployments", json={"model": done["fine_tuned_model"]})
        assert deployed.status_code == 200, deployed.text
        dep_id = deployed.json()["id"]
        live.wait_for(client, f"/v1/deployments/{dep_id}", {"ready", "failed"}, 180)
    picture = tmp_path / "two.png"
    picture.write_bytes(digit_images(1, (2,))["2"][0])
    browser.get(f"{server.base_url}/#/deployments?select={dep_id}")
    wait(
        "the playground's file field for the image model",
        lambda: browser.execute_script(
            "const f = document.querySelector('#playground-files');"
            "return document.querySelector('#playground-deployment').value === arguments[0]"
            " && f.offsetParent !== null && f.accept === 'image/*'"
            " && document.querySelector('#playground-input').offsetParent === null;",
            dep_id,
        ),
    )
    browser.find_element("css selector", "#playground-files").send_keys(str(picture))
    predicted = predict_in_playground(browser, 1)
    assert "two.png" in predicted and "%" in predicted, predicted
    assert any(label in predicted for label in ("0", "1", "2")), predicted
    shot(browser, "15-playground-image")
