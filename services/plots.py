"""PNG pictures of a job and of a sweep, drawn with matplotlib's object API on the Agg canvas.

No pyplot: each picture is its own ``Figure`` with its own ``FigureCanvasAgg``, so API threads
never share drawing state. What is drawn comes from ``services.plot_views`` (stored checkpoints
and history, bounded in size), so a picture costs about the same for any job. matplotlib is
imported on the first picture: it takes about a second, which every API process start would
otherwise pay.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from services.db.models import DEFAULT_TENANT
from services.plot_views import Fit, JobView, ParameterPath, SweepView, job_view, sweep_view

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL = (5.2, 4.3)  # inches per panel; 100 dpi
DPI = 100
FINISHED_EARLY = "early_stopped"
MAX_VALUE_PANELS = 3  # sweep: final SSR against at most this many varied paths
PLAIN = {"parse_math": False}  # names and values are the client's text: a "$" is no TeX
# matplotlib places ticks a step beyond an axis's limits and overflows past about 1e270 on a log
# axis (1e307 on a linear one), where a diverged job's last finite SSR can be: values are drawn
# clipped into +-EDGE (a log axis: [TINY, EDGE]), and a panel that clipped one says so.
EDGE = 1e200
TINY = 1e-300


def job_png(job_id: str, *, tenant: str = DEFAULT_TENANT) -> bytes:
    """``GET /v1/jobs/{id}/plot.png``: NotFound for an unknown job."""
    return draw_job(job_view(job_id, tenant=tenant))


def sweep_png(sweep_id: str, *, tenant: str = DEFAULT_TENANT) -> bytes:
    """``GET /v1/sweeps/{id}/plot.png``: NotFound for an unknown sweep."""
    return draw_sweep(sweep_view(sweep_id, tenant=tenant))


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL[0] * panels, PANEL[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    # Fixed margins: constrained layout measures every tick label once more (twice the time).
    width = PANEL[0] * panels
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.25 / width, bottom=0.12, top=0.80, wspace=0.28)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": "Descent"})
    return out.getvalue()


def draw_job(view: JobView) -> bytes:
    """Data and fitted curve (one input, one output); SSR against the single trained scalar;
    the SSR path by step (log axis). Panels that do not apply are left out."""
    drawers: list[Callable[[Axes], None]] = []
    if view.fit is not None:
        drawers.append(partial(_draw_fit, fit=view.fit))
    if view.parameter is not None:
        drawers.append(partial(_draw_parameter, path=view.parameter))
    drawers.append(partial(_draw_ssr_path, view=view))
    fig, axes = _figure(len(drawers))
    job = view.job
    ssr = "no SSR yet" if job.ssr is None else f"SSR {job.ssr:.4g}"
    reason = f" ({job.stop_reason})" if job.stop_reason else ""
    one = len(drawers) == 1  # one panel is too narrow for the title on one line
    name = f"{_short(job.name, 36 if one else 60)} · {job.id[:8]}"
    fig.suptitle(f"{name}{chr(10) if one else ' · '}{job.status}{reason} at step {job.step}, {ssr}", **PLAIN)
    for draw, ax in zip(drawers, axes):
        draw(ax)
    return _png(fig)


def _draw_fit(ax: Axes, fit: Fit) -> None:
    grid, initial, latest, x, y = _within(ax, fit.grid, fit.initial, fit.latest, fit.x, fit.y)
    ax.plot(grid, initial, color="C0", lw=1.5, ls="--", alpha=0.35, label=f"step {fit.first_step}")
    ax.plot(grid, latest, color="C0", lw=2.2, label=f"step {fit.step}")
    shown = "" if len(fit.x) == fit.n_points else f" ({len(fit.x)} of {fit.n_points} shown)"
    ax.scatter(x, y, color="black", s=28, zorder=3, label=f"data{shown}")
    ax.set(title="Data and fitted curve", xlabel="x", ylabel="y")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def _draw_parameter(ax: Axes, path: ParameterPath) -> None:
    ax.margins(x=0.06, y=0.1)  # room for the step numbers
    values, ssr, curve_values, curve_ssr = _within(ax, path.values, path.ssr, path.curve_values, path.curve_ssr)
    if len(curve_values):
        ax.plot(curve_values, curve_ssr, color="0.35", lw=1.8, label="SSR, other parameters as stored")
    ax.plot(values, ssr, color="C3", lw=0.8, alpha=0.5)
    ax.scatter(values, ssr, color="C3", s=26, zorder=3,
               label="each step" if path.every_step else "stored checkpoints")
    ax.scatter(values[-1:], ssr[-1:], color="C3", marker="*", s=160, zorder=4,
               label=f"step {int(path.steps[-1])}: {path.label.split()[0]} = {path.values[-1]:.4g}")
    for k in _annotated(values, ssr):
        ax.annotate(str(int(path.steps[k])), (values[k], ssr[k]), textcoords="offset points",
                    xytext=(5, 5), fontsize="x-small", color="C3")
    how = "the descent's steps" if path.every_step else "checkpoints only (replay unavailable)"
    ax.set(title=f"SSR against {path.label}\n{how}", xlabel=path.label, ylabel="SSR")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)


def _annotated(values: np.ndarray, ssr: np.ndarray, apart: float = 0.05) -> list[int]:
    """Marks that get their step number: the last, and each earlier one at least ``apart`` (a
    share of the drawn ranges) from every numbered one, so crowded steps near a minimum do not
    print over each other."""
    finite = np.isfinite(values) & np.isfinite(ssr)
    if not finite.any():
        return []
    span = [np.ptp(a[finite]) or 1.0 for a in (values, ssr)]
    chosen: list[int] = []
    for k in [len(values) - 1, *range(len(values) - 1)]:
        here = np.array([values[k] / span[0], ssr[k] / span[1]])
        if finite[k] and all(np.hypot(*(here - [values[j] / span[0], ssr[j] / span[1]])) >= apart for j in chosen):
            chosen.append(k)
    return chosen


def _draw_ssr_path(ax: Axes, view: JobView) -> None:
    steps, ssr = view.steps, view.ssr
    good = np.isfinite(ssr) & (ssr > 0)
    if good.any():
        shown, = _within(ax, ssr[good], log=True)
        ax.plot(steps[good], shown, color="C3", lw=1.8, marker="o" if good.sum() <= 50 else None, ms=3)
        ax.set_yscale("log")
    else:
        _empty(ax, "no SSR recorded yet")
    thinned = "" if len(steps) == view.n_steps else f"\n{len(steps)} of {view.n_steps} steps shown"
    ax.set(title=f"SSR by step{thinned}", xlabel="step", ylabel="SSR (log scale)")
    ax.grid(alpha=0.3, which="both")


def _short(name: str, most: int) -> str:
    """A name as a title shows it: names run to 200 characters, wider than a picture."""
    return name if len(name) <= most else name[:most - 1] + "…"


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _within(ax: Axes, *arrays: Any, log: bool = False) -> list[np.ndarray]:
    """The arrays as drawn: clipped into what matplotlib can place on an axis (see EDGE), with a
    note on the panel when a value was beyond EDGE. NaN and infinities pass through (matplotlib
    leaves them out)."""
    shown, beyond = [], False
    for values in arrays:
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        beyond = beyond or bool((np.abs(finite) > EDGE).any())
        clipped = np.clip(values, TINY if log else -EDGE, EDGE)
        shown.append(np.where(np.isfinite(values), clipped, values))
    if beyond and not any(t.get_text().startswith("values beyond") for t in ax.texts):
        ax.text(0.02, 0.02, f"values beyond {EDGE:.0e} drawn at the edge", transform=ax.transAxes,
                fontsize="x-small", color="0.4")
    return shown


def draw_sweep(view: SweepView) -> bytes:
    """Members' SSR curves overlaid (early-stopped ones faint, coloured by the first varied
    value when it is a number), and final SSR against each varied value."""
    paths = view.paths[:MAX_VALUE_PANELS]
    fig, axes = _figure(1 + max(1, len(paths)))
    limited = f"; curves of {len(view.curves)} of {len(view.members)} members (spread over the ranking)" \
        if len(view.curves) < len([m for m in view.members if m.ssr is not None]) else ""
    more = f"; {len(view.paths) - len(paths)} more varied paths not drawn" if len(view.paths) > len(paths) else ""
    name = f"sweep {_short(view.name, 48)} · {view.id[:8]}"
    fig.suptitle(f"{name} · {view.status}: {len(view.members)} members{limited}{more}", **PLAIN)
    colour = _colouring(fig, axes[0], view)
    _draw_overlay(axes[0], view, colour)
    if not paths:
        _empty(axes[1], "nothing varied")
    for i, (path, ax) in enumerate(zip(paths, axes[1:])):
        _draw_values(ax, view, path, legend=i == 0)
    return _png(fig)


def _colouring(fig: Figure, ax: Axes, view: SweepView) -> Any:
    """member -> colour, by the first varied path's value when every one is a number."""
    first = view.paths[0] if view.paths else None
    values = [(m.sweep_values or {}).get(first) for m in view.members] if first else []
    if not values or not all(_is_number(v) for v in values):
        return lambda member: "C0"
    from matplotlib import cm, colors

    low, high = (float(v) for v in _within(ax, [min(values), max(values)])[0])
    log = low > 0 and high / low >= 10
    norm = colors.LogNorm(low, high) if log else colors.Normalize(low, high if high > low else low + 1)
    mapper = cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(mapper, ax=ax, label=first)
    return lambda member: mapper.to_rgba(np.clip((member.sweep_values or {})[first], low, high))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _draw_overlay(ax: Axes, view: SweepView, colour: Any) -> None:
    by_id = {m.id: m for m in view.members}
    drawn = 0
    for job_id, (steps, ssr) in view.curves.items():
        good = np.isfinite(ssr) & (ssr > 0)
        if not good.any():
            continue
        early = by_id[job_id].stop_reason == FINISHED_EARLY
        shown, = _within(ax, ssr[good], log=True)
        ax.plot(steps[good], shown, color=colour(by_id[job_id]), lw=0.9 if early else 1.6,
                alpha=0.3 if early else 0.9)
        drawn += 1
    if drawn:
        from matplotlib.lines import Line2D

        ax.set_yscale("log")
        ax.legend(handles=[Line2D([], [], color="0.2", lw=1.6, label="trained on"),
                           Line2D([], [], color="0.2", lw=0.9, alpha=0.3, label="early stopped")],
                  loc="best", fontsize="small")
    else:
        _empty(ax, "no SSR recorded yet")
    ax.set(title="SSR by step, each member", xlabel="step", ylabel="SSR (log scale)")
    ax.grid(alpha=0.3, which="both")


def _draw_values(ax: Axes, view: SweepView, path: str, legend: bool) -> None:
    """Final SSR against one varied path: a number axis (log when positive over a decade or
    more, as learning rates are), else one slot per distinct value."""
    done = [m for m in view.members if m.ssr is not None and m.ssr > 0]
    values = [(m.sweep_values or {}).get(path) for m in done]
    if not done:
        _empty(ax, "no SSR yet")
        ax.set(title=f"final SSR against {path}", xlabel=path, ylabel="SSR")
        return
    if all(_is_number(v) for v in values):
        xs = np.array(values, dtype=np.float64)
        log = bool(xs.min() > 0 and xs.max() / xs.min() >= 10)
        xs, = _within(ax, xs, log=log)
        if log:
            ax.set_xscale("log")
    else:
        labels = sorted({repr(v) for v in values})
        xs = np.array([labels.index(repr(v)) for v in values], dtype=np.float64)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, fontsize="small", **PLAIN)
    ssr, = _within(ax, [m.ssr for m in done], log=True)
    early = np.array([m.stop_reason == FINISHED_EARLY for m in done])
    diverged = np.array([m.status == "diverged" for m in done])
    trained = ~early & ~diverged
    ax.scatter(xs[trained], ssr[trained], color="C0", s=30, zorder=3, label="trained on")
    if early.any():
        ax.scatter(xs[early], ssr[early], facecolors="none", edgecolors="C0", alpha=0.5, s=30,
                   label="early stopped (SSR at its rung)")
    if diverged.any():
        ax.scatter(xs[diverged], ssr[diverged], color="C3", marker="x", s=40, label="diverged (last finite)")
    ranked = np.flatnonzero(~diverged)  # a diverged member's last finite SSR is never the best
    if len(ranked):
        best = int(ranked[np.argmin(ssr[ranked])])
        ax.scatter(xs[best:best + 1], ssr[best:best + 1], color="gold", edgecolors="black", marker="*", s=260,
                   zorder=2, label=f"best: {done[best].ssr:.4g}")  # under its member's dot
    ax.set_yscale("log")
    ax.set(title=f"final SSR against {path}", xlabel=path, ylabel="final SSR (log scale)")
    if legend:
        ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3, which="both")

