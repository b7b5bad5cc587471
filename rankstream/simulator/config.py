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
    # How servers nobody here wrote end a stream badly (halfway through the answer):
    "no_done",  # the body ends cleanly with neither a finish_reason nor [DONE] (a dropped upstream)
    "error_line",  # llama.cpp: an SSE `error:` field line, then `data: [DONE]` all the same
    "error_event",  # `event: error` whose data has no "error" key
    "error_object",  # vLLM: a `{"object": "error", ...}` chunk, then [DONE]
    "broken_after_done",  # the whole answer and [DONE], then the connection dropped mid-body
    # Framing that is not a fault, as real servers send it: the same answer, other bytes.
    "framing_keepalive",  # comments, keep-alive and empty data lines, id/retry fields, "[DONE] "
    "framing_crlf",  # CRLF line ends
    "framing_cr",  # bare CR line ends (the SSE spec allows them)
    "no_usage",  # no usage chunk, though stream_options asked for one
)
"""Every fault the simulator can inject; `SimConfig.fault` and `POST /sim/faults` take these."""


FORMS = ("json_schema", "json_object", "tools")
"""The ways of asking for JSON the simulator can be told to refuse, as other servers do."""


@dataclass
class SimConfig:
    """How the simulator behaves; `fault` is the default for every request.

    `refuse`: the forms of asking for JSON it answers with an error, as servers that do not
    support them do (llama-cpp-python refuses json_schema); `POST /sim/formats` changes it.
    """

    ttft: float = 0.5
    tokens_per_second: float = 50.0
    fault: str = "none"
    model: str = "rankstream-sim"
    refuse: tuple[str, ...] = ()
