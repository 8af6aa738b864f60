"""Figures and a table of accuracies from one TensorBoard run.

The figures follow Figures 1-4 of Xu, Wang, Frei, Vardi and Hu, "Benign
Overfitting and Grokking in ReLU Networks for XOR Cluster Data" (ICLR 2024).
``python -m lightning_grok report RUN_DIR [--out DIR]`` reads the event files of
one run (a ``runs/<name>/version_N`` folder) and writes into ``DIR``
(default ``RUN_DIR/report``):

- ``accuracy.png``: the median and the 20%-80% band of ``train/acc`` and
  ``test/acc`` against ``t + 1`` on a log axis, as in Figure 1.
- ``plane_step<t>.png``: the ``alignment/plane`` figure logged at step ``t``,
  the network and data projected onto ``span(mu_1, mu_2)`` as in Figure 2.
- ``alignment_histograms.png``: histograms of ``<w_j, mu_1>`` and
  ``<w_j, mu_2>`` over neurons with ``a_j > 0``, one column per step, as in
  Figures 3 and 4.
- ``report.md``: median accuracies with their 20%-80% range at selected steps,
  linking the figures.

A figure whose data the run did not log is skipped with one printed line.
"""

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EVENT_FILE_PATTERN = "events.out.tfevents.*"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ACCURACY_TAGS = ("train/acc", "test/acc", "train/acc_flipped")
"""Columns of the accuracy table."""

HISTOGRAM_TAGS = ("alignment/pos_dot_mu1", "alignment/pos_dot_mu2")
PLANE_TAG = "alignment/plane"

MAX_TABLE_ROWS = 25
MAX_HISTOGRAM_COLUMNS = 6


@dataclass
class RunEvents:
    """The events of one TensorBoard run, by tag and step.

    A step logged twice, as after resuming from a checkpoint, keeps the value
    read last.

    Attributes:
        scalars: ``{tag: {step: value}}``.
        histograms: ``{tag: {step: (edges, counts)}}``, ``edges`` of shape
            ``(k + 1,)`` and ``counts`` of shape ``(k,)``.
        images: ``{tag: {step: encoded image bytes}}``, PNG for figures
            written by ``SummaryWriter.add_figure``.
    """

    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    histograms: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    images: dict[str, dict[int, bytes]] = field(default_factory=dict)


def find_event_files(run_dir: Path) -> list[Path]:
    """Return the event files directly in ``run_dir``.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a folder or contains no event file.
            For a folder with runs below it, such as ``runs/<name>``, the
            message lists the run folders to pick from.
    """
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    files = sorted(run_dir.glob(EVENT_FILE_PATTERN))
    if files:
        return files

    runs_below = sorted({path.parent for path in run_dir.rglob(EVENT_FILE_PATTERN)})
    message = f"no TensorBoard event file ({EVENT_FILE_PATTERN}) in {run_dir}"
    if runs_below:
        listed = ", ".join(str(path) for path in runs_below[:5])
        more = f" and {len(runs_below) - 5} more" if len(runs_below) > 5 else ""
        message += f"; pass one run folder, e.g. {listed}{more}"
    raise FileNotFoundError(message)


def read_run(run_dir: str | Path) -> RunEvents:
    """Read every scalar, histogram and image event of the run in ``run_dir``.

    Raises:
        FileNotFoundError: as :func:`find_event_files`.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    find_event_files(run_dir)
    # A size guidance of 0 keeps every event; the default keeps a sample.
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()

    events = RunEvents()
    for tag in tags["scalars"]:
        events.scalars[tag] = {event.step: event.value for event in accumulator.Scalars(tag)}
    for tag in tags["histograms"]:
        events.histograms[tag] = {
            event.step: histogram_buckets(event.histogram_value) for event in accumulator.Histograms(tag)
        }
    for tag in tags["images"]:
        events.images[tag] = {event.step: event.encoded_image_string for event in accumulator.Images(tag)}
    return events


def histogram_buckets(histogram) -> tuple[np.ndarray, np.ndarray]:
    """Convert a TensorBoard ``HistogramValue`` into bin edges and counts.

    Bucket ``i`` counts the values in ``(bucket_limit[i-1], bucket_limit[i]]``,
    and bucket 0 has no lower limit. The outer edges are clipped to the
    recorded ``min`` and ``max``, because TensorFlow's writer ends its limits at
    the largest double and PyTorch's writer puts an empty bucket first.

    Returns:
        ``edges`` of shape ``(k + 1,)`` and ``counts`` of shape ``(k,)``.
    """
    limits = np.asarray(histogram.bucket_limit, dtype=np.float64)
    counts = np.asarray(histogram.bucket, dtype=np.float64)
    edges = np.concatenate([[min(histogram.min, limits[0])], limits])
    return np.clip(edges, histogram.min, histogram.max), counts


def choose_steps(steps: Sequence[int], max_count: int) -> list[int]:
    """Choose at most ``max_count`` of the logged ``steps``, spread evenly in ``log(t + 1)``.

    All steps are kept if there are at most ``max_count``. Otherwise each of
    the targets 0, 1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, ... up to the last
    step is replaced by the first logged step at or after it, and the first and
    last logged steps are always kept. If that still gives more than
    ``max_count`` steps, evenly spaced ones among them are kept.

    Example::

        >>> choose_steps(range(0, 401, 5), 12)
        [0, 5, 10, 20, 30, 50, 70, 100, 200, 300, 400]
    """
    if max_count < 2:
        raise ValueError(f"max_count must be >= 2 to keep the first and last step, got {max_count}")
    steps = sorted(set(steps))
    if len(steps) <= max_count:
        return steps

    last = steps[-1]
    chosen = {steps[0], last}
    for target in _round_numbers_up_to(last):
        index = int(np.searchsorted(steps, target))
        if index < len(steps):
            chosen.add(steps[index])
    chosen_steps = sorted(chosen)
    if len(chosen_steps) <= max_count:
        return chosen_steps
    indices = np.unique(np.round(np.linspace(0, len(chosen_steps) - 1, max_count)).astype(int))
    return [chosen_steps[index] for index in indices]


def _round_numbers_up_to(last: int) -> list[int]:
    numbers = [0]
    scale = 1
    while scale <= last:
        numbers.extend(mantissa * scale for mantissa in (1, 2, 3, 5, 7) if mantissa * scale <= last)
        scale *= 10
    return numbers


def format_cell(scalars: dict[str, dict[int, float]], tag: str, step: int) -> str:
    """Format the median of ``tag`` at ``step``, with the 20%-80% range when it was logged.

    Values have three decimals; a step the tag was not logged at gives ``-``.

    Example::

        >>> format_cell({"test/acc": {1: 0.5}, "test/acc_q20": {1: 0.48}, "test/acc_q80": {1: 0.54}}, "test/acc", 1)
        '0.500 (0.480-0.540)'
    """
    median = scalars.get(tag, {}).get(step)
    if median is None:
        return "-"
    low = scalars.get(f"{tag}_q20", {}).get(step)
    high = scalars.get(f"{tag}_q80", {}).get(step)
    if low is None or high is None:
        return f"{median:.3f}"
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def accuracy_table(scalars: dict[str, dict[int, float]], steps: Sequence[int]) -> str:
    """Build a Markdown table of the accuracy medians at ``steps``, one row per step."""
    lines = [
        "| step t | " + " | ".join(ACCURACY_TAGS) + " |",
        "|---:|" + "---:|" * len(ACCURACY_TAGS),
    ]
    for step in steps:
        cells = [format_cell(scalars, tag, step) for tag in ACCURACY_TAGS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_steps(scalars: dict[str, dict[int, float]], max_rows: int = MAX_TABLE_ROWS) -> list[int]:
    """Choose the table rows: the steps with a test accuracy, or else with a training accuracy."""
    for tag in ("test/acc", "train/acc"):
        if scalars.get(tag):
            return choose_steps(list(scalars[tag]), max_rows)
    return []


def plot_accuracy(scalars: dict[str, dict[int, float]], path: Path) -> None:
    """Draw the median and the 20%-80% band of training and test accuracy against ``t + 1``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for tag, label, color in (("train/acc", "train accuracy", "tab:blue"), ("test/acc", "clean test accuracy", "tab:orange")):
        if not scalars.get(tag):
            continue
        steps = np.array(sorted(scalars[tag]))
        axes.plot(steps + 1, [scalars[tag][step] for step in steps], color=color, label=label)
        low, high = scalars.get(f"{tag}_q20", {}), scalars.get(f"{tag}_q80", {})
        band_steps = np.array([step for step in steps if step in low and step in high])
        if band_steps.size:
            lows = [low[step] for step in band_steps]
            highs = [high[step] for step in band_steps]
            axes.fill_between(band_steps + 1, lows, highs, color=color, alpha=0.25, linewidth=0)

    axes.axhline(0.5, color="black", linestyle=":", linewidth=1, label="chance")
    axes.set(xscale="log", xlabel="t + 1 (gradient descent steps + 1)", ylabel="accuracy", ylim=(-0.02, 1.02))
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120)


def plot_histograms(histograms: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], steps: Sequence[int], path: Path) -> None:
    """Draw ``<w_j, mu_1>`` (top row) and ``<w_j, mu_2>`` (bottom row) histograms, one column per step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.6 * len(steps) + 0.6, 4.6), layout="constrained")
    grid = figure.subplots(2, len(steps), sharex="col", squeeze=False)
    for row, tag in enumerate(HISTOGRAM_TAGS):
        for column, step in enumerate(steps):
            axes = grid[row, column]
            if step in histograms.get(tag, {}):
                edges, counts = histograms[tag][step]
                axes.stairs(counts, edges, fill=True, color="tab:red" if row == 0 else "tab:blue")
            if row == 0:
                axes.set_title(f"t = {step}")
            else:
                axes.set_xlabel(r"$\langle w_j, \mu_k\rangle$")
            axes.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        grid[row, 0].set_ylabel(rf"neurons with $a_j > 0$" + "\n" + rf"by $\langle w_j, \mu_{row + 1}\rangle$")
    figure.savefig(path, dpi=120)


def save_plane_images(images: dict[int, bytes], out_dir: Path) -> tuple[list[Path], list[int]]:
    """Write each logged PNG image as ``plane_step<t>.png``.

    Returns:
        The paths written and the steps whose image was not a PNG, which are skipped.
    """
    written, skipped = [], []
    for step in sorted(images):
        encoded = images[step]
        if not encoded.startswith(PNG_SIGNATURE):
            skipped.append(step)
            continue
        path = out_dir / f"plane_step{step}.png"
        path.write_bytes(encoded)
        written.append(path)
    return written, skipped


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    histogram_steps: Sequence[int] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Write the figures and ``report.md`` of the run in ``run_dir`` into ``out_dir``.

    Args:
        run_dir: one run folder with TensorBoard event files.
        out_dir: where to write; ``run_dir/report`` if ``None``. Created if missing.
        histogram_steps: the histogram columns; if ``None``, up to
            ``MAX_HISTOGRAM_COLUMNS`` of the logged steps chosen by :func:`choose_steps`.
            Steps that were not logged are skipped.
        echo: called with one line per figure skipped.

    Returns:
        The paths written, ``report.md`` last.

    Raises:
        FileNotFoundError: as :func:`find_event_files`.
    """
    run_dir = Path(run_dir)
    events = read_run(run_dir)
    out_dir = run_dir / "report" if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    sections = [f"# Report of {run_dir}"]
    results = [
        _accuracy_section(events, out_dir, echo),
        _plane_section(events, out_dir, echo),
        _histogram_section(events, out_dir, histogram_steps, echo),
    ]
    for paths, section in results:
        written.extend(paths)
        if section is not None:
            sections.append(section)

    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    written.append(path)
    return written


# Each section writer returns the paths it wrote and its part of report.md, or
# (no paths, None) after echoing why it was skipped.
Section = tuple[list[Path], str | None]


def _accuracy_section(events: RunEvents, out_dir: Path, echo: Callable[[str], None]) -> Section:
    if not (events.scalars.get("train/acc") or events.scalars.get("test/acc")):
        echo("skipped the accuracy figure and table: no train/acc or test/acc scalars in the run")
        return [], None

    path = out_dir / "accuracy.png"
    plot_accuracy(events.scalars, path)
    table = accuracy_table(events.scalars, table_steps(events.scalars))
    note = "Each cell is the median over seeds, with the 20%-80% quantiles in brackets when the run trained several seeds."
    return [path], f"## Accuracy (as Figure 1)\n\n![accuracy]({path.name})\n\n{table}\n\n{note}"


def _plane_section(events: RunEvents, out_dir: Path, echo: Callable[[str], None]) -> Section:
    planes, not_png = save_plane_images(events.images.get(PLANE_TAG, {}), out_dir)
    if not_png:
        echo(f"skipped {PLANE_TAG} at steps {not_png}: the image is not a PNG")
    if not planes:
        if not not_png:
            echo(f"skipped the projection figures: no {PLANE_TAG} images in the run")
        return [], None

    links = "\n\n".join(f"![{path.stem}]({path.name})" for path in planes)
    return planes, f"## Projection onto `span(mu_1, mu_2)` (as Figure 2)\n\n{links}"


def _histogram_section(
    events: RunEvents, out_dir: Path, histogram_steps: Sequence[int] | None, echo: Callable[[str], None]
) -> Section:
    logged_steps = sorted(set().union(*(events.histograms.get(tag, {}) for tag in HISTOGRAM_TAGS)))
    if not logged_steps:
        echo(f"skipped the histogram figure: no {' or '.join(HISTOGRAM_TAGS)} histograms in the run")
        return [], None

    if histogram_steps is None:
        columns = choose_steps(logged_steps, MAX_HISTOGRAM_COLUMNS)
    else:
        columns = [step for step in histogram_steps if step in logged_steps]
    if not columns:
        echo(f"skipped the histogram figure: none of steps {list(histogram_steps)} has a histogram; logged steps are {logged_steps}")
        return [], None

    path = out_dir / "alignment_histograms.png"
    plot_histograms(events.histograms, columns, path)
    return [path], f"## `<w_j, mu_k>` over neurons with `a_j > 0` (as Figures 3 and 4)\n\n![histograms]({path.name})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m lightning_grok report`` on ``argv`` and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_grok report",
        description="Write figures in the style of the paper and a table of accuracies from one TensorBoard run.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder with event files, e.g. runs/base/version_0")
    parser.add_argument("--out", type=Path, default=None, help="the folder to write into (default: RUN_DIR/report)")
    parser.add_argument(
        "--histogram-steps",
        type=_parse_steps,
        default=None,
        help=f"comma-separated steps for the histogram columns, e.g. 0,1,2,3,10 (default: up to {MAX_HISTOGRAM_COLUMNS} logged steps spread in log(t + 1))",
    )
    args = parser.parse_args(argv)

    try:
        written = write_report(args.run_dir, args.out, args.histogram_steps)
    except FileNotFoundError as error:
        parser.error(str(error))
    for path in written:
        print(path)
    return 0


def _parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not steps or any(step < 0 for step in steps):
        raise argparse.ArgumentTypeError(f"expected one or more integers >= 0, got {text!r}")
    return steps
