"""Step schedules: at which optimizer steps a quantity is measured and logged."""

import math
from collections.abc import Sequence
from typing import Literal

ScheduleMode = Literal["every", "log"]


class StepSchedule:
    """Select steps ``t = 0, 1, ..., last_step`` at which a quantity is measured.

    Steps 0 (the initialization), 1 and ``last_step`` are always selected. In
    ``"every"`` mode every ``every``-th step is selected as well. In ``"log"``
    mode the steps ``round(10 ** (k / per_decade))`` for ``k = 0, 1, ...`` are
    selected, so that a 5000-step run gets dense early points and sparse late
    ones (about ``per_decade`` points between ``10**d`` and ``10**(d + 1)``).

    Args:
        mode: ``"every"`` or ``"log"``.
        every: the period in steps, used in ``"every"`` mode; at least 1.
        per_decade: points per factor of ten, used in ``"log"`` mode; at least 1.
        extra_steps: steps selected in addition, such as the steps a figure shows.

    Raises:
        ValueError: if ``mode`` is not one of the allowed values or a count is below 1.

    Example::

        >>> StepSchedule("every", every=4).steps(10)
        [0, 1, 4, 8, 10]
        >>> StepSchedule("log", per_decade=2).steps(100)
        [0, 1, 3, 10, 32, 100]
    """

    def __init__(
        self,
        mode: ScheduleMode = "every",
        every: int = 1,
        per_decade: int = 10,
        extra_steps: Sequence[int] = (),
    ) -> None:
        if mode not in ("every", "log"):
            raise ValueError(f"schedule mode must be 'every' or 'log', got {mode!r}")
        for name, value in (("every", every), ("per_decade", per_decade)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"schedule {name} must be an integer >= 1, got {value!r}")
        for step in extra_steps:
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"schedule extra_steps must contain integers >= 0, got {step!r}")
        self.mode = mode
        self.every = every
        self.per_decade = per_decade
        self.extra_steps = frozenset(extra_steps)

    def selects(self, step: int, last_step: int) -> bool:
        """Return whether ``step`` is measured in a run that ends at ``last_step``."""
        if step in (0, 1) or step == last_step or step in self.extra_steps:
            return True
        if self.mode == "every":
            return step % self.every == 0
        return step == self._nearest_log_step(step)

    def steps(self, last_step: int) -> list[int]:
        """List the selected steps of a run that ends at ``last_step``, in increasing order."""
        return [step for step in range(last_step + 1) if self.selects(step, last_step)]

    def _nearest_log_step(self, step: int) -> int:
        # The grid point round(10 ** (k / per_decade)) closest to `step`; checking the
        # neighbours of k makes the test exact despite rounding of the logarithm.
        center = round(math.log10(step) * self.per_decade)
        candidates = [round(10 ** (k / self.per_decade)) for k in (center - 1, center, center + 1) if k >= 0]
        return min(candidates, key=lambda candidate: abs(candidate - step))

    def __repr__(self) -> str:
        extra = f", extra_steps={sorted(self.extra_steps)}" if self.extra_steps else ""
        return f"StepSchedule(mode={self.mode!r}, every={self.every}, per_decade={self.per_decade}{extra})"
