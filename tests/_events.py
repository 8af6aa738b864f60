"""Read the scalars of a TensorBoard run, for assertions on logged values."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(log_dir: str | Path) -> dict[str, dict[int, float]]:
    """Return ``{tag: {step: value}}`` for every scalar under ``log_dir`` (one run)."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def read_step_lists(log_dir: str | Path) -> dict[str, list[int]]:
    """Return ``{tag: [step, ...]}`` with repeats kept, to detect a step logged twice."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
