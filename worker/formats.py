"""Which response format each server accepts: json_schema first, then the next form, remembered.

"OpenAI-compatible" servers differ in how they let a caller ask for JSON: llama-cpp-python
refuses `json_schema` but takes `json_object` (its grammar forces valid JSON), some gateways
refuse `response_format` altogether but take tools, a few take none of them. With
RANKSTREAM_RESPONSE_FORMAT=auto a refusal moves a (model, base URL) on to the next form, once,
for every later job of the process too; a named form is always used as it is.
"""

from __future__ import annotations

import json
import logging

import openai

from rankstream.codes import ResponseFormat

log = logging.getLogger("rankstream.worker")

# How servers say they refuse a form: the status, and words of the form in the error.
REFUSAL_STATUSES = frozenset({400, 404, 415, 422, 500, 501})
_WORDS = {
    ResponseFormat.JSON_SCHEMA: ("response_format", "json_schema", "structured output", "guided"),
    ResponseFormat.JSON_OBJECT: ("response_format", "json_object"),
    ResponseFormat.TOOLS: ("tool",),
}


def refused(exc: BaseException, form: ResponseFormat) -> bool:
    """Whether `exc` is a server's refusal of `form` itself (not of the request as a whole)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in REFUSAL_STATUSES:
        return False
    said = f"{exc.message} {json.dumps(exc.body, default=str)}".lower()
    return any(word in said for word in _WORDS.get(form, ()))


class FormatMemory:
    """The form to ask each (model, base URL) in; one per worker process, used on its event loop."""

    def __init__(self, setting: ResponseFormat) -> None:
        self.setting = setting
        self._learned: dict[tuple[str, str], ResponseFormat] = {}

    def form(self, model: str, base_url: str) -> ResponseFormat:
        if self.setting is not ResponseFormat.AUTO:
            return self.setting
        return self._learned.get((model, base_url), ResponseFormat.JSON_SCHEMA)

    def fall_back(self, model: str, base_url: str, form: ResponseFormat) -> ResponseFormat | None:
        """The form to ask in after `form` was refused, now remembered; None when there is no other."""
        if self.setting is not ResponseFormat.AUTO or form.next is None:
            return None
        current = self._learned.get((model, base_url), ResponseFormat.JSON_SCHEMA)
        if current is form:  # the first job to see the refusal moves the model on, for all
            self._learned[(model, base_url)] = form.next
            log.warning(
                "%s at %s refused response format %s; asking in %s from now on",
                model,
                base_url,
                form,
                form.next,
            )
        return self._learned[(model, base_url)]
