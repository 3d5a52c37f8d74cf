"""Pictures as a person would check them: each PNG is read back as an image (its size, not
blank, one axes frame per panel, the curves' colours present), and the StatQuest numbers behind
the lesson's picture are checked against the stored checkpoints and an independent oracle.
The page's files are served as they are, with nothing fetched from elsewhere."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.routes.page import STATIC
from services import plot_views, plots, scheduler
from services.examples import STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES, statquest_job, statquest_named
from services.training import run_pack
from tests.api.conftest import train

C0, C3 = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)  # matplotlib's first and fourth colours


def image(png: bytes) -> np.ndarray:
    """(H, W, 3) floats in [0, 1], read with matplotlib (PIL may be absent)."""
    import matplotlib.image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]


def axes_frames(img: np.ndarray, longest: int = 150) -> int:
    """How many axes frames: distinct right ends of long dark horizontal runs (the top and
    bottom spines of a panel end at its right spine; tick labels may run into their left end)."""
    dark = (img < 0.25).all(axis=2)
    ends = set()
    for row in dark:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        for start, end in zip(edges[::2], edges[1::2]):
            if end - start >= longest:
                ends.add(int(end) // 4)
    return len({e for e in ends if e - 1 not in ends})


def pixels_of(img: np.ndarray, rgb: tuple[int, int, int], tolerance: float = 0.06) -> int:
    return int((np.abs(img - np.array(rgb) / 255).max(axis=2) < tolerance).sum())


def assert_picture(png: bytes, panels: int) -> np.ndarray:
    img = image(png)
    height, width = img.shape[:2]
    assert (width, height) == (round(plots.PANEL[0] * panels * plots.DPI), round(plots.PANEL[1] * plots.DPI))
    assert (img < 0.95).any(axis=2).mean() > 0.02, "the picture is (nearly) blank"
    assert axes_frames(img) == panels
    return img


def get_png(client: TestClient, path: str) -> bytes:
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    return answer.content


def test_statquest_picture_shows_fit_b3_curve_and_ssr_path(client: TestClient, trained_job: str) -> None:
    img = assert_picture(get_png(client, f"/v1/jobs/{trained_job}/plot.png"), panels=3)
    assert pixels_of(img, C0) > 300, "no fitted curve"
    assert pixels_of(img, C3) > 300, "no descent marked / no SSR path"


def oracle_b3_path(named: dict[str, float], steps: int, lr: float = 0.1) -> list[float]:
    """b3 at steps 0..steps by the lesson's own arithmetic: b3 -= lr * dSSR/db3."""
    x, y = np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 0.0])
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731
    hidden = named["w3"] * softplus(named["w1"] * x + named["b1"]) + named["w4"] * softplus(named["w2"] * x + named["b2"])
    path = [0.0]
    for _ in range(steps):
        path.append(path[-1] - lr * float(np.sum(-2 * (y - hidden - path[-1]))))
    return path


def test_b3_is_replayed_at_every_step_and_lands_on_every_stored_checkpoint(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=statquest_job() | {"checkpoint_every": 4})
    job_id = answer.json()["id"]
    train(job_id)
    path = plot_views.job_view(job_id).parameter
    assert path is not None and path.every_step and path.label.startswith("b3")
    assert path.steps.tolist() == list(range(STATQUEST_UPDATES + 1))
    assert round(path.ssr[0], 2) == STATQUEST_SSR0 and round(path.values[1], 2) == 1.57
    assert round(path.values[-1], 2) == STATQUEST_B3
    for step in (0, 4, 8, 9):  # the stored checkpoints
        stored = client.get(f"/v1/jobs/{job_id}/parameters", params={"step": step}).json()
        assert statquest_named(stored["layers"])["b3"] == path.values[step]
    named = statquest_named(client.get(f"/v1/jobs/{job_id}/parameters").json()["layers"])
    np.testing.assert_allclose(path.values, oracle_b3_path(named, STATQUEST_UPDATES), rtol=1e-12, atol=1e-12)
    history = client.get(f"/v1/jobs/{job_id}/history").json()["ssr"]
    assert path.ssr.tolist() == history
    assert len(path.curve_values) == plot_views.CURVE_POINTS
    best = path.curve_values[np.argmin(path.curve_ssr)]
    assert abs(best - STATQUEST_B3) < 0.05, "the SSR curve's minimum is where the descent stops"


def test_without_a_replay_only_stored_checkpoints_are_marked(
    client: TestClient, trained_job: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plot_views, "MAX_REPLAY_STEPS", 0)
    path = plot_views.job_view(trained_job).parameter
    assert path is not None and not path.every_step
    assert path.steps.tolist() == [0, STATQUEST_UPDATES]  # checkpoint_every 100: step 0 and the end
    assert round(path.values[-1], 2) == STATQUEST_B3


def test_a_replay_that_misses_a_stored_checkpoint_is_not_drawn(
    client: TestClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job() | {"checkpoint_every": 4}).json()["id"]
    train(job_id)
    rule = plot_views._replay_config
    monkeypatch.setattr(plot_views, "_replay_config", lambda spec, *args: rule(
        spec.model_copy(update={"learning_rate": spec.learning_rate * 1.001}), *args))
    path = plot_views.job_view(job_id).parameter
    assert path is not None and not path.every_step
    assert path.steps.tolist() == [0, 4, 8, 9]  # the stored checkpoints, nothing in between


def test_a_job_training_everything_has_fit_and_thinned_ssr_panels(
    client: TestClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = statquest_job() | {"init": {"seed": 3}, "trainable": None, "stop": {"max_steps": 300},
                                  "checkpoint_every": 50}
    job_id = client.post("/v1/jobs", json=document).json()["id"]
    train(job_id)
    monkeypatch.setattr(plot_views, "MAX_POINTS", 40)
    view = plot_views.job_view(job_id)
    assert view.parameter is None and view.fit is not None and view.fit.step == 300
    assert len(view.steps) <= 40 and view.steps[0] == 0 and view.steps[-1] == 300 and view.n_steps == 301
    img = assert_picture(plots.draw_job(view), panels=2)
    assert pixels_of(img, C0) > 300 and pixels_of(img, C3) > 300


def test_a_queued_job_is_a_one_panel_picture_and_unknown_ids_are_404(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    assert_picture(get_png(client, f"/v1/jobs/{job_id}/plot.png"), panels=1)
    for path in ("/v1/jobs/nope/plot.png", "/v1/sweeps/nope/plot.png"):
        answer = client.get(path)
        assert answer.status_code == 404 and "detail" in answer.json()


def lr_sweep() -> dict:
    return {
        "name": "lr-scan", "base": statquest_job() | {"stop": {"max_steps": 12, "min_step_size": 0.0}},
        "grid": {"learning_rate": [0.005, 0.02, 0.05, 0.1, 0.2, 0.3]},
        "early_stopping": {"type": "successive_halving", "min_steps": 2, "reduction_factor": 2},
    }


def run_sweep(sweep_id: str, client: TestClient) -> None:
    for _ in range(30):
        scheduler.run_pass("plots", publish=lambda ids, device: run_pack(ids, hostname="pytest", pid=1))
        if client.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "finished":
            return
    raise AssertionError("the sweep did not finish")


def test_sweep_picture_overlays_members_and_plots_final_ssr_against_the_learning_rate(
    client: TestClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sweep_id = client.post("/v1/sweeps", json=lr_sweep()).json()["id"]
    run_sweep(sweep_id, client)
    img = assert_picture(get_png(client, f"/v1/sweeps/{sweep_id}/plot.png"), panels=2)
    right = img[:, img.shape[1] // 2:]
    assert ((right[..., 2] - right[..., 0]) > 0.2).sum() > 200, "no members in the sensitivity panel"
    view = plot_views.sweep_view(sweep_id)
    assert len(view.curves) == 6 and view.paths == ["learning_rate"] and view.status == "finished"
    assert sum(m.stop_reason == "early_stopped" for m in view.members) == 5
    monkeypatch.setattr(plot_views, "MAX_CURVES", 3)
    few = plot_views.sweep_view(sweep_id)
    ranked = sorted(view.members, key=lambda m: (m.ssr, m.id))
    assert list(few.curves) == [ranked[i].id for i in (0, 2, 5)]  # the best, the middle, the worst
    assert_picture(plots.draw_sweep(few), panels=2)


def test_openapi_documents_the_pictures_as_png_with_404(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs/{job_id}/plot.png", "/v1/sweeps/{sweep_id}/plot.png"):
        answers = paths[path]["get"]["responses"]
        assert "image/png" in answers["200"]["content"] and "404" in answers
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_the_page_and_its_files_are_served_and_fetch_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "/static/style.css" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "/v1/jobs" in script.text and "Authorization" in script.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/..%2Fmain.py").status_code == 404
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_ssr_vs_parameter_curve_is_skipped_when_a_forward_pass_costs_too_much(
    client: TestClient, trained_job: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plot_views, "PREDICT_BUDGET", 10.0)
    view = plot_views.job_view(trained_job)
    assert view.parameter is not None and len(view.parameter.curve_values) == 0 and view.parameter.every_step
    assert_picture(plots.draw_job(view), panels=3)  # the steps alone



def test_with_auth_on_the_page_needs_no_key_and_a_picture_is_its_tenants_only(
    limited: Callable[..., TestClient],
) -> None:
    alice, bob = {"Authorization": "Bearer alice-key-0123456789"}, {"Authorization": "Bearer bob-key-0123456789ab"}
    client = limited(api_keys="alice:alice-key-0123456789,bob:bob-key-0123456789ab")
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    job_id = client.post("/v1/jobs", json=statquest_job(), headers=alice).json()["id"]
    train(job_id)
    assert client.get(f"/v1/jobs/{job_id}/plot.png").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}/plot.png", headers=bob).status_code == 404
    assert_picture(client.get(f"/v1/jobs/{job_id}/plot.png", headers=alice).content, panels=3)


def test_dollar_signs_in_names_and_values_are_text_not_tex(client: TestClient) -> None:
    tex = r"a $\frac{$ b"  # mathtext would fail on it: a 500
    job_id = client.post("/v1/jobs", json=statquest_job() | {"name": tex}).json()["id"]
    train(job_id)
    assert_picture(get_png(client, f"/v1/jobs/{job_id}/plot.png"), panels=3)
    body = {"name": tex, "base": statquest_job() | {"stop": {"max_steps": 3}},
            "grid": {"name": [tex, "$z$"], "learning_rate": [0.05, 0.1]}}
    sweep_id = client.post("/v1/sweeps", json=body).json()["id"]
    run_sweep(sweep_id, client)
    assert_picture(get_png(client, f"/v1/sweeps/{sweep_id}/plot.png"), panels=3)


def test_pictures_drawn_in_parallel_threads_equal_one_drawn_alone(client: TestClient, trained_job: str) -> None:
    """The API draws in its thread pool: figures share no state, so threads change nothing."""
    view = plot_views.job_view(trained_job)
    alone = plots.draw_job(view)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: plots.draw_job(view), range(4))) == {alone}


def diverging_job(learning_rate: float, trainable: list[str] | None = None) -> dict:
    """One identity neuron on one point: its first step takes the SSR to about lr^2, the next
    overflows, so the job ends diverged with a last finite SSR as large as float64 allows."""
    return {"name": "diverges", "learning_rate": learning_rate, "trainable": trainable,
            "architecture": {"layers": [1, 1], "activation": "identity", "output_activation": "identity"},
            "data": {"x": [[1.0]], "y": [[0.0]]}, "stop": {"max_steps": 10},
            "init": {"parameters": {"layers": [{"weight": [[1.0]], "bias": [0.0]}]}}}


@pytest.mark.parametrize("learning_rate", [1e100, 1e142, 1e150, 1e153])
@pytest.mark.parametrize("trainable", [None, ["layers.0.bias"]])
def test_a_job_that_diverged_at_a_huge_ssr_is_still_drawn(
    client: TestClient, learning_rate: float, trainable: list[str] | None,
) -> None:
    job_id = client.post("/v1/jobs", json=diverging_job(learning_rate, trainable)).json()["id"]
    train(job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "diverged" and job["ssr"] > 1e199, job  # matplotlib failed on 1e270..1e293
    img = assert_picture(get_png(client, f"/v1/jobs/{job_id}/plot.png"), panels=2 if trainable is None else 3)
    assert pixels_of(img, C3) > 100, "the SSR path is not drawn"


@pytest.mark.parametrize("rates", [[1e142, 0.1, 1e-3], [1e142, 1e153, 0.1, 1e-3], [1e142, 1e153]])
def test_a_sweep_with_a_member_diverged_at_a_huge_ssr_is_still_drawn(client: TestClient, rates: list[float]) -> None:
    document = {"name": "huge", "base": diverging_job(0.1), "grid": {"learning_rate": rates}}
    sweep_id = client.post("/v1/sweeps", json=document).json()["id"]
    run_sweep(sweep_id, client)
    statuses = sorted(m.status for m in plot_views.sweep_view(sweep_id).members)
    huge = sum(rate > 1 for rate in rates)
    assert statuses == ["diverged"] * huge + ["succeeded"] * (len(rates) - huge)
    assert_picture(get_png(client, f"/v1/sweeps/{sweep_id}/plot.png"), panels=2)
