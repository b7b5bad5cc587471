"""What the simulator is told when it starts: `SimConfig`, and `FAULTS`, the faults it knows."""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = (
    "none",
    "rate_limit",
    "server_error",
    "disconnect",
    "stall",
    "slow_first_token",
    "garbage",
    "truncate",
    "numeric_ids",
)
"""Every fault the simulator can inject; `SimConfig.fault` and `POST /sim/faults` take these."""


@dataclass
class SimConfig:
    """How the simulator behaves; `fault` is the default for every request."""

    ttft: float = 0.5
    tokens_per_second: float = 50.0
    fault: str = "none"
    model: str = "rankstream-sim"
