"""What the LLM is asked: every candidate's id verbatim, and a schema that pins ids to the catalogue."""

from __future__ import annotations

import json

from rankstream.models import RankingRequest
from worker import prompt

ODD_IDS = ["42", "SKU-001/β", "a b", "ÄÖÜ-7", "x" * 128]


def request(**overrides: object) -> RankingRequest:
    products = [{"product_id": pid, "product_name": f"Product {n}"} for n, pid in enumerate(ODD_IDS)]
    return RankingRequest.model_validate({"profile": "likes things", "products": products, **overrides})


def test_every_candidate_id_appears_verbatim_in_the_prompt() -> None:
    user = prompt.messages(request())[-1]["content"]
    for product_id in ODD_IDS:
        assert f'"product_id": "{product_id}"' in user


def test_the_schema_pins_product_id_to_the_catalogue() -> None:
    schema = prompt.response_format(request())["json_schema"]["schema"]
    item = schema["properties"][prompt.ARRAY_FIELD]["items"]
    assert item["properties"]["product_id"]["enum"] == ODD_IDS
    assert item["required"] == ["product_id"] and item["additionalProperties"] is False
    json.dumps(schema)  # serialisable as sent


def test_top_k_is_asked_for() -> None:
    assert "the 3 most relevant" in prompt.messages(request(top_k=3))[-1]["content"]
