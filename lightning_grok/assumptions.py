"""Check settings against the assumptions (A1)-(A6) of the benign overfitting and grokking theorem.

Xu, Wang, Frei, Vardi and Hu ("Benign Overfitting and Grokking in ReLU Networks
for XOR Cluster Data", ICLR 2024) prove a theorem that holds with probability at
least ``1 - n^-Omega(1) - O(1/sqrt(m))``. For ``1 <= t <= sqrt(n)`` the network
fits every training label, and at ``t = 1`` its clean test error is close to
1/2. For ``C n^0.01 <= t <= sqrt(n)`` the clean test error is at most
``exp(-Omega(n^0.99 ||mu||^4 / p))``. The theorem assumes, for a large universal
constant ``C``:

- (A1) ``||mu||^2 >= C n^0.51 sqrt(p)``
- (A2) ``p >= C n^2 ||mu||^2``
- (A3) ``eta <= 1/C``
- (A4) ``alpha <= 1/(C n p)``
- (A5) ``omega_init n m^1.5 p <= alpha ||mu||^2``
- (A6) ``m >= C n^0.02``

The theorem does not give ``C``, so this module reports, for each assumption
but (A5), the largest ``C`` for which the inequality holds. The paper's own
experiments violate (A1), (A2) and (A5) and still show the phenomenon.
"""

import math
from dataclasses import dataclass
from typing import Any

STATEMENTS = {
    "A1": "‖mu‖^2 >= C n^0.51 sqrt(p)",
    "A2": "p >= C n^2 ‖mu‖^2",
    "A3": "eta <= 1/C",
    "A4": "alpha <= 1/(C n p)",
    "A5": "omega_init n m^1.5 p <= alpha ‖mu‖^2",
    "A6": "m >= C n^0.02",
}
"""Each assumption as an inequality in plain text, by name.

The norm is written ``‖mu‖`` because an ASCII ``|`` would end a Markdown table cell.
"""


@dataclass(frozen=True)
class AssumptionCheck:
    """The outcome of checking one assumption on given settings.

    Attributes:
        name: ``"A1"`` to ``"A6"``.
        statement: the inequality in plain text.
        largest_constant: the largest ``C`` for which the inequality holds
            (``inf`` if it holds for every ``C``, ``0`` if for none), or
            ``None`` for (A5), which has no constant.
        holds: whether the inequality holds with ``C = 1``, that is
            ``largest_constant >= 1``; for (A5), whether ``ratio >= 1``.
        ratio: for (A5), ``alpha ||mu||^2 / (omega_init n m^1.5 p)``, which is
            at least 1 exactly when (A5) holds; ``None`` for the others.
    """

    name: str
    statement: str
    largest_constant: float | None
    holds: bool
    ratio: float | None = None


def check_assumptions(
    input_dim: int,
    num_train: int,
    width: int,
    flip_rate: float,
    mean_norm: float,
    lr: float,
    init_scale: float,
) -> list[AssumptionCheck]:
    """Check (A1)-(A6) for one set of settings.

    An assumption with a constant ``C`` counts as holding when its largest
    ``C`` is at least 1. The theorem needs a large ``C``, so ``holds`` is a
    necessary condition only: read ``largest_constant`` to see by how much.

    Args:
        input_dim: ``p``.
        num_train: ``n``.
        width: ``m``.
        flip_rate: ``eta``.
        mean_norm: ``||mu||``.
        lr: ``alpha``, the gradient descent step size.
        init_scale: ``omega_init``, the standard deviation of each initial hidden weight.

    Returns:
        One :class:`AssumptionCheck` per assumption, (A1) to (A6) in order.

    Example::

        >>> [check.name for check in check_assumptions(40000, 200, 1000, 0.05, 35.36, 1e-12, 1e-15) if not check.holds]
        ['A1', 'A2', 'A5']
    """
    p, n, m = float(input_dim), float(num_train), float(width)
    mean_norm_sq = float(mean_norm) ** 2

    constants = {
        "A1": _ratio(mean_norm_sq, n**0.51 * math.sqrt(p)),
        "A2": _ratio(p, n**2 * mean_norm_sq),
        "A3": _ratio(1.0, flip_rate),
        "A4": _ratio(1.0, lr * n * p),
        "A6": _ratio(m, n**0.02),
    }
    a5_ratio = _ratio(lr * mean_norm_sq, init_scale * n * m**1.5 * p)

    checks = []
    for name, statement in STATEMENTS.items():
        if name == "A5":
            checks.append(AssumptionCheck(name, statement, None, a5_ratio >= 1.0, ratio=a5_ratio))
        else:
            constant = constants[name]
            checks.append(AssumptionCheck(name, statement, constant, constant >= 1.0))
    return checks


def _ratio(numerator: float, denominator: float) -> float:
    # Every inequality reads ``C * denominator <= numerator`` with both sides >= 0,
    # so a zero denominator lets it hold for every C, and 0 <= 0 holds as well.
    if denominator == 0.0:
        return math.inf
    return numerator / denominator


def format_assumptions(checks: list[AssumptionCheck]) -> str:
    """Format checks as a Markdown table, which also reads as plain text.

    Example::

        >>> print(format_assumptions(check_assumptions(100, 10, 20, 0.0, 1.0, 1e-5, 1e-9)).splitlines()[4])
        | A3 | eta <= 1/C | inf | yes |
    """
    lines = [
        "| assumption | statement | largest C | holds (C >= 1) |",
        "|---|---|---|---|",
    ]
    for check in checks:
        if check.largest_constant is None:
            constant = f"no C; alpha ‖mu‖^2 / (omega_init n m^1.5 p) = {check.ratio:.3g}"
        else:
            constant = f"{check.largest_constant:.3g}"
        lines.append(f"| {check.name} | {check.statement} | {constant} | {'yes' if check.holds else 'no'} |")
    return "\n".join(lines)


def assumptions_markdown(datamodule: Any, model: Any) -> str | None:
    """Check (A1)-(A6) for the settings of an instantiated data module and model.

    Reads ``input_dim``, ``num_train``, ``flip_rate`` and ``mean_norm`` from the
    data module and ``width``, ``lr`` and ``init_scale`` from the model.

    Returns:
        The table of :func:`format_assumptions`, or ``None`` if one of the
        settings is not an attribute of the objects, as for a model from
        another project.
    """
    try:
        checks = check_assumptions(
            input_dim=datamodule.input_dim,
            num_train=datamodule.num_train,
            width=model.width,
            flip_rate=datamodule.flip_rate,
            mean_norm=datamodule.mean_norm,
            lr=model.lr,
            init_scale=model.init_scale,
        )
    except AttributeError:
        return None
    return format_assumptions(checks)
