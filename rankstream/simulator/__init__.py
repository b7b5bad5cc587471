"""The LLM simulator: an OpenAI-compatible chat-completions server that ranks products.

It owns everything an LLM does for rankstream when no OpenAI key is set, and what every test
talks to: reading the catalogue out of the worker's prompt, a deterministic relevance ranking
(`rank`), writing the answer in the shape the request asks for (json_schema, json_object, a
tool call, or chatty prose with a fenced array), splitting it into tokens and pacing them
like a hosted model (time to first token, tokens per second), switchable faults, and a log
of what it served (`/sim/requests`) that tests read.

It is a real HTTP server (FastAPI on uvicorn) for the real `openai` client, never a patched
function. `create_app` builds it, `serve` runs it in the foreground (`rankstream llm-sim`),
and `start_in_thread` runs it on a free port beside the caller (the demo and the tests).

One request's path through the modules:

- `config`: `SimConfig` and `FAULTS`;
- `app`: the routes, request validation, `create_app`;
- `faults`: which fault the request gets, and the ones answered with an HTTP error;
- `plan`: everything the answer will be, decided up front, from
  `prompt` (the profile and candidates out of the messages; the prompt format is documented
  there), `ranking` (the heuristic), `shapes` (the JSON the request asks for), `answer` (the
  text in that shape) and `tokens` (the text split into tokens);
- `generation`: sending it, paced, watching for the client to go away;
- `wire`: OpenAI's chunk, completion and error formats;
- `record`: the request log;
- `server`: running it, in the foreground or in a thread.
"""

from __future__ import annotations

from .app import create_app
from .config import FAULTS, SimConfig
from .prompt import Candidate, read_prompt
from .ranking import BRAND_WEIGHT, Ranked, rank
from .record import REQUEST_LOG_SIZE
from .server import RunningSim, serve, start_in_thread
from .tokens import MAX_TOKEN_CHARS, tokenize

__all__ = [
    "BRAND_WEIGHT",
    "FAULTS",
    "MAX_TOKEN_CHARS",
    "REQUEST_LOG_SIZE",
    "Candidate",
    "Ranked",
    "RunningSim",
    "SimConfig",
    "create_app",
    "rank",
    "read_prompt",
    "serve",
    "start_in_thread",
    "tokenize",
]
