"""Text the model cannot read: every answer says how much of the question the tokenizer knows;
below QSIM_MIN_COVERAGE it keeps only stored questions with the same text and says why, instead of
returning the nearest codes of an unreadable question (false positives)."""

from __future__ import annotations

import pytest

FOREIGN = {
    "chinese": ("我的银行卡还没有寄到", "今天天气怎么样"),
    "arabic": ("لم تصل بطاقتي الجديدة بعد", "ما هو لون السماء"),
    "cyrillic": ("моя карта до сих пор не пришла", "где находится ближайший музей"),
    "emoji": ("💳📦❓", "🍕🍕🎉"),
}


def test_every_answer_carries_coverage_and_a_normal_one_no_reason(client, stored):
    single = client.post("/questions/similar", json={"question": stored[0]["text"]}).json()
    assert single["coverage"] > 0.9 and single["reason"] is None and single["reason_detail"] is None
    batch = client.post("/questions/similar/batch", json={"questions": [stored[1]["text"], "💳📦❓"]}).json()
    assert [item["reason"] for item in batch["results"]] == [None, "low_coverage"]
    assert all(0.0 <= item["coverage"] <= 1.0 for item in batch["results"])


@pytest.mark.parametrize("script", sorted(FOREIGN))
def test_unreadable_questions_do_not_match_unrelated_ones_in_the_same_script(client, stored, script):
    kept, unrelated = FOREIGN[script]
    saved = client.post("/questions", json={"text": kept}).json()
    # The loosest rule there is: any stored question would match on its nearest codes.
    body = client.post("/questions/similar", json={"question": unrelated, "threshold": 1e12}).json()
    assert body["reason"] == "low_coverage" and body["coverage"] < 0.5
    assert "QSIM_MIN_COVERAGE" in body["reason_detail"]
    assert body["results"] == []
    # The exact stored question still finds itself first (and only itself).
    itself = client.post("/questions/similar", json={"question": kept, "threshold": 1e12}).json()
    assert itself["reason"] == "low_coverage"
    assert [r["id"] for r in itself["results"]] == [saved["id"]] and itself["results"][0]["distance"] == pytest.approx(0.0, abs=1e-9)
    # The same text up to case and spacing is the same normalised text.
    spaced = client.post("/questions/similar", json={"question": f"  {kept.upper()}  "}).json()
    assert [r["id"] for r in spaced["results"]] == [saved["id"]]


def test_min_coverage_zero_answers_every_question_by_its_codes(settings, tiny_model_dir):
    from tests.service_fixtures import start_client

    client = start_client(settings.model_copy(update={"min_coverage": 0.0}))
    try:
        client.post("/questions", json={"text": "今天天气怎么样"})
        body = client.post("/questions/similar", json={"question": "我的银行卡还没有寄到", "threshold": 1e12}).json()
        assert body["reason"] is None and len(body["results"]) == 1
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("text", ["\u200b\u200d\u2060", "\ufeff \u200e", "\u00ad"])
def test_invisible_only_text_is_a_422_on_create_and_search(client, text):
    for route, body in [("/questions", {"text": text}), ("/questions/similar", {"question": text}),
                        ("/questions/similar/batch", {"questions": ["ok", text]}),
                        ("/questions/by-external-id/z", {"text": text})]:
        response = client.request("PUT" if "by-external-id" in route else "POST", route, json=body)
        assert response.status_code == 422, (route, response.text)
        assert "empty" in response.json()["detail"]
