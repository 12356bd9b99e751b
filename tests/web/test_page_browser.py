"""The desk page in chromium, against the real service on the tiny model: ask, see the matches the
API gives, move the sliders and see the set change, read the pair grid, give feedback and find it
stored, use the admin panel, and fit a phone. No request may leave the service (desk_page checks
every one) and the page may log no script error."""

from __future__ import annotations

import time

import pytest

from tests.service_fixtures import ADMIN_TOKEN
from tests.web.browser import no_sideways_scroll
from tests.web.conftest import open_page

pytestmark = pytest.mark.timeout(300)


def ask(page, question: str) -> list[int]:
    """Types the question, presses Enter, waits for the answer; the ids shown, in order."""
    page.goto("/")
    page.wait_for_selector("#rule:not([disabled])")  # the model's rule arrived (from the map)
    page.fill("#question", question)
    page.press("#question", "Enter")
    settle(page)
    return shown_ids(page)


def shown_ids(page) -> list[int]:
    return page.eval_on_selector_all("#results [data-question-id]", "nodes => nodes.map(n => Number(n.dataset.questionId))")


def api_ids(api, question: str, **rule) -> list[int]:
    """What the API answers with its default limit (10), which the page lists before "show all"."""
    body = {"question": question, **rule}  # limit=25 for the page's whole pool
    response = api.post("/questions/similar", json=body)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def settle(page) -> None:
    """Waits until the list shown is the service's answer for the rule shown (after asking, or
    after a slider let go)."""
    page.wait_for_selector('#results[data-checked="true"]', state="attached")


def rule_of(page) -> tuple[float, int]:
    return page.evaluate(
        "() => [Number(document.getElementById('threshold').value), Number(document.getElementById('min-pairs').value)]"
    )


def test_ask_shows_the_services_matches_closest_first(desk_page, desk_api, tiny_corpus_rows):
    question = tiny_corpus_rows[4]["text"]
    shown = ask(desk_page, question)
    assert shown, desk_page.text_content("#status")
    assert shown == api_ids(desk_api, question)
    model = desk_api.post("/questions/explain", json={"question": question, "ids": shown[:1]}).json()["model"]
    threshold, min_pairs = rule_of(desk_page)
    assert threshold == pytest.approx(model["threshold"], rel=1e-9) and min_pairs == model["min_pairs"]
    assert desk_page.text_content("#threshold-value") == f"{model['threshold']:.3f}"
    first = desk_page.locator(f"#results [data-question-id='{shown[0]}']")
    stored = desk_api.get(f"/questions/{shown[0]}").json()
    assert stored["text"] in first.text_content()
    expected_answer = stored["answer"] or "No answer stored for this question."
    assert expected_answer in first.locator(".answer").text_content()
    assert "pairs within t" in first.locator(".facts").text_content()
    # Both kinds of answer appear somewhere in the list: stored ones, and the plain "none".
    answers = desk_page.locator("#results .answer").all_text_contents()
    assert any(a.startswith("Answer") for a in answers) or any("No answer" in a for a in answers)
    paths = desk_page.request_log.paths()
    for path in ("/", "/ui/app.js", "/ui/app.css", "/questions/map", "/questions/explain", "/questions/similar"):
        assert path in paths, (path, paths)


def test_sliders_change_the_accepted_set_as_they_move(desk_page, desk_api, tiny_corpus_rows):
    question = tiny_corpus_rows[40]["text"]
    calibrated = ask(desk_page, question)
    slider = desk_page.locator("#threshold")
    slider.focus()
    desk_page.keyboard.press("Home")  # t = 0
    settle(desk_page)
    threshold, min_pairs = rule_of(desk_page)
    assert threshold == 0
    at_zero = shown_ids(desk_page)
    assert at_zero == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs)
    desk_page.keyboard.press("End")  # the widest t on the slider
    settle(desk_page)
    threshold, min_pairs = rule_of(desk_page)
    wide = shown_ids(desk_page)
    assert len(wide) > len(at_zero) and len(wide) >= len(calibrated)
    assert wide == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs)
    desk_page.click("#show-all")  # every match of the pool, not only the first 10
    assert shown_ids(desk_page) == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs, limit=25)
    desk_page.click("#show-all")
    assert shown_ids(desk_page) == wide
    # Dragged with the mouse, the set follows while the slider moves, before it is let go.
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    desk_page.mouse.move(box["x"] + box["width"] - 2, y)
    desk_page.mouse.down()
    counts = []
    for step in range(1, 11):
        desk_page.mouse.move(box["x"] + box["width"] * (1 - step / 10) + 1, y, steps=3)
        counts.append(len(shown_ids(desk_page)))
    assert desk_page.get_attribute("#results", "data-checked") == "false"  # not let go: not checked yet
    desk_page.mouse.up()
    settle(desk_page)
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1], counts
    threshold, min_pairs = rule_of(desk_page)
    assert shown_ids(desk_page) == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs)
    # min_pairs: all K x K pairs within t is stricter than one.
    desk_page.locator("#min-pairs").focus()
    desk_page.keyboard.press("Home")
    settle(desk_page)
    loose = shown_ids(desk_page)
    desk_page.keyboard.press("End")
    settle(desk_page)
    threshold, min_pairs = rule_of(desk_page)
    strict = shown_ids(desk_page)
    assert set(strict) <= set(loose) and len(strict) < len(loose)
    assert strict == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs)
    assert desk_page.text_content("#min-pairs-value").startswith(f"{min_pairs} of")
    # Back to the calibrated values, and to the first answer.
    desk_page.click("#reset-rule")
    settle(desk_page)
    assert shown_ids(desk_page) == calibrated


def test_a_question_the_model_cannot_read_says_why(desk_page, desk_api):
    question = "我的银行卡还没有寄到"
    answer = desk_api.post("/questions/similar", json={"question": question}).json()
    shown = ask(desk_page, question)
    assert shown == [r["id"] for r in answer["results"]]
    if answer.get("reason"):
        assert answer["reason_detail"] in desk_page.text_content("#status")
    # Moving the slider does not bring back what the service left out.
    desk_page.locator("#threshold").focus()
    desk_page.keyboard.press("End")
    settle(desk_page)
    threshold, min_pairs = rule_of(desk_page)
    assert shown_ids(desk_page) == api_ids(desk_api, question, threshold=threshold, min_pairs=min_pairs)


def test_pair_grid_shows_the_rule_for_a_chosen_match(desk_page, desk_api, tiny_corpus_rows):
    question = tiny_corpus_rows[100]["text"]
    shown = ask(desk_page, question)
    assert len(shown) >= 1
    chosen = shown[-1]
    desk_page.click(f"#results [data-question-id='{chosen}'] .pick")
    grid = desk_page.locator("#pair-grid")
    explained = desk_api.post("/questions/explain", json={"question": question, "ids": [chosen]}).json()
    k = explained["model"]["samples"]
    assert grid.locator("tbody td").count() == k * k
    threshold, min_pairs = rule_of(desk_page)
    distances = [d for row in explained["results"][0]["distances"] for d in row]
    within = sum(d <= explained["model"]["threshold"] for d in distances)
    assert grid.locator("td.within").count() == within
    shown_cells = [float(text.split()[0]) for text in grid.locator("tbody td").all_text_contents()]
    assert shown_cells == pytest.approx(distances, abs=5e-4)
    assert f"{within} of {k * k} pairs within t" in desk_page.text_content("#why-verdict")
    # Colour against the threshold: within and beyond cells look different.
    colours = set(grid.locator("td.within").evaluate_all("cells => cells.map(c => getComputedStyle(c).backgroundColor.slice(0, 12))"))
    if within < k * k:
        beyond = grid.locator("td.beyond").first.evaluate("c => getComputedStyle(c).backgroundColor")
        assert beyond not in colours
    # Moving t recolours the grid: at t = 0 nothing but identical codes is within.
    desk_page.locator("#threshold").focus()
    desk_page.keyboard.press("Home")
    assert grid.locator("td.within").count() == sum(d <= 0 for d in distances)


def test_feedback_buttons_store_the_verdict(desk_page, desk_api, tiny_corpus_rows):
    question = tiny_corpus_rows[200]["text"]
    ask(desk_page, question)
    desk_page.locator("#threshold").focus()
    desk_page.keyboard.press("End")  # widest t: more than one match to judge
    settle(desk_page)
    shown = shown_ids(desk_page)
    assert len(shown) >= 2
    first = desk_page.locator(f"#results [data-question-id='{shown[0]}']")
    first.locator('[data-feedback="duplicate"]').click()
    first.locator(".feedback-status", has_text="Saved").wait_for()
    assert first.locator(".feedback-status").text_content() == "Saved: duplicate."
    assert first.locator('[data-feedback="duplicate"]').get_attribute("aria-pressed") == "true"
    second = desk_page.locator(f"#results [data-question-id='{shown[1]}']")
    second.locator('[data-feedback="not-duplicate"]').focus()
    desk_page.keyboard.press("Enter")  # the keyboard works too
    second.locator(".feedback-status", has_text="Saved").wait_for()
    assert second.locator(".feedback-status").text_content() == "Saved: not a duplicate."
    stored = desk_api.get("/admin/feedback", params={"limit": 500}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert stored.status_code == 200, stored.text
    mine = [item for item in stored.json()["items"] if item["question"] == question]
    assert {item["question_id"]: item["duplicate"] for item in mine} == {shown[0]: True, shown[1]: False}
    assert {item["source"] for item in mine} == {"desk-page"}


def test_map_shows_the_stored_questions_and_the_query_samples(desk_page, desk_api, tiny_corpus_rows):
    question = tiny_corpus_rows[10]["text"]
    ask(desk_page, question)
    mapped = desk_api.get("/questions/map").json()
    assert desk_page.locator("#map-points circle").count() == mapped["sampled"] == len(tiny_corpus_rows)
    k = mapped["model"]["samples"]
    desk_page.locator("#map-overlay path.sample").first.wait_for()
    assert desk_page.locator("#map-overlay path.sample").count() == k
    assert desk_page.locator("#map-overlay circle.ring").count() == len(shown_ids(desk_page))
    # Coloured by the category metadata: as many colours as categories, and a legend.
    fills = set(desk_page.locator("#map-points circle").evaluate_all("dots => dots.map(d => d.getAttribute('fill'))"))
    categories = {row["category"] for row in tiny_corpus_rows}
    assert len(fills) == len(categories)
    assert desk_page.locator("#map-legend li").count() >= min(len(categories), 12)
    assert desk_page.input_value("#color-by") == "category"
    # Zoomed to the question: a smaller part of the plane, the question's codes still drawn.
    whole = [float(v) for v in desk_page.get_attribute("#map", "viewBox").split()]
    desk_page.click("#zoom")
    assert desk_page.get_attribute("#zoom", "aria-pressed") == "true"
    zoomed = [float(v) for v in desk_page.get_attribute("#map", "viewBox").split()]
    assert zoomed[2] < whole[2] and desk_page.locator("#map-overlay path.sample").count() == k
    desk_page.click("#zoom")
    assert [float(v) for v in desk_page.get_attribute("#map", "viewBox").split()] == whole
    desk_page.select_option("#color-by", "")
    fills = set(desk_page.locator("#map-points circle").evaluate_all("dots => dots.map(d => d.getAttribute('fill'))"))
    assert len(fills) == 1


def test_admin_panel_starts_a_reindex_and_keeps_the_token_in_memory(desk_page):
    desk_page.goto("/")
    desk_page.click("#admin-details summary")
    assert desk_page.locator("#start-reindex").is_disabled()
    desk_page.fill("#admin-token", "not-the-token")
    desk_page.press("#admin-token", "Enter")
    desk_page.click("#start-reindex")
    desk_page.locator("#admin-status", has_text="refused the token").wait_for()
    assert desk_page.locator("#start-reindex").is_disabled()  # a refused token is forgotten
    desk_page.fill("#admin-token", ADMIN_TOKEN)
    desk_page.press("#admin-token", "Enter")
    assert desk_page.input_value("#admin-token") == ""
    desk_page.click("#start-reindex")
    desk_page.locator("#job-state", has_text="succeeded").wait_for(timeout=120_000)
    assert desk_page.locator("#job-progress").evaluate("p => p.value") == 1
    assert "finished" in desk_page.text_content("#admin-status")
    storage = desk_page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert storage == [0, 0, ""]
    assert ADMIN_TOKEN not in desk_page.content()
    assert desk_page.context.cookies() == []
    # The token went only to the service, as a bearer header.
    desk_page.click("#forget-token")
    assert desk_page.locator("#start-reindex").is_disabled()
    desk_page.script_errors[:] = [e for e in desk_page.script_errors if "401" not in e]


def test_admin_panel_cluster_job(desk_page, desk_api, tiny_corpus_rows):
    has_clusters = "/admin/clusters" in desk_api.get("/openapi.json").json()["paths"]
    ask(desk_page, tiny_corpus_rows[3]["text"])  # the slider now reaches the 25 nearest questions
    desk_page.locator("#threshold").focus()
    desk_page.keyboard.press("End")  # the job clusters with the rule on the sliders: a wide one
    settle(desk_page)
    desk_page.click("#admin-details summary")
    desk_page.fill("#admin-token", ADMIN_TOKEN)
    desk_page.press("#admin-token", "Enter")
    desk_page.click("#start-clusters")
    if not has_clusters:  # a service without cluster jobs: the page says so instead of failing
        desk_page.locator("#admin-status", has_text="no cluster jobs").wait_for()
        desk_page.script_errors[:] = [e for e in desk_page.script_errors if "404" not in e and "405" not in e]
        return
    desk_page.locator("#clusters p", has_text="clusters of duplicates").wait_for(timeout=120_000)
    job_id = desk_page.get_attribute("#job", "data-job-id")
    result = desk_api.get(f"/admin/clusters/{job_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    threshold, min_pairs = rule_of(desk_page)
    assert result["threshold"] == pytest.approx(threshold) and result["min_pairs"] == min_pairs
    summary = desk_page.text_content("#clusters p")
    assert summary.startswith(f"{len(result['clusters'])} clusters of duplicates, {result['singletons']} questions")
    assert result["clusters"], "a threshold this wide joins some questions"
    first = desk_page.locator("#clusters > ol > li").first
    assert first.locator("summary").text_content().startswith(f"{result['clusters'][0]['size']} ×")
    first.locator("summary").click()
    assert first.locator("ul li").count() == min(30, len(result["clusters"][0]["members"]))


def test_keyboard_and_labels(desk_page, tiny_corpus_rows):
    desk_page.goto("/")
    desk_page.wait_for_selector("#rule:not([disabled])")
    # Every control has a label (or an accessible name).
    unnamed = desk_page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, output')].filter(c => {
            if (c.labels && c.labels.length) return false;
            return !(c.getAttribute('aria-label') || c.textContent.trim());
        }).map(c => c.outerHTML)"""
    )
    assert unnamed == []
    # From the top of the page the first Tab reaches the skip link, which leads to the question.
    desk_page.keyboard.press("Tab")
    assert desk_page.evaluate("() => document.activeElement.className") == "skip"
    desk_page.keyboard.press("Enter")
    assert desk_page.evaluate("() => document.activeElement.id") == "question"
    desk_page.keyboard.type(tiny_corpus_rows[55]["text"])
    desk_page.keyboard.press("Enter")
    desk_page.locator("#results [data-question-id]").first.wait_for()
    # Tab onwards reaches the sliders, then the matches' buttons.
    seen = []
    for _ in range(12):
        desk_page.keyboard.press("Tab")
        seen.append(desk_page.evaluate("() => document.activeElement.id || document.activeElement.dataset.feedback || document.activeElement.className"))
    assert "threshold" in seen and "min-pairs" in seen and "pick" in seen and "duplicate" in seen, seen
    assert seen.index("threshold") < seen.index("pick")


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_readable_without_sideways_scroll(chromium, desk_service, tiny_corpus_rows, tmp_path, width):
    context, page, log, errors = open_page(chromium, desk_service.base, width)
    try:
        assert ask(page, tiny_corpus_rows[7]["text"])  # a stored text: it matches itself at least
        page.locator("#pair-grid td").first.wait_for()  # the closest match's grid is open
        page.locator("#map-points circle").first.wait_for()
        page.click("#admin-details summary")
        time.sleep(0.3)
        fit = no_sideways_scroll(page)
        assert fit["scrollWidth"] <= fit["clientWidth"] and fit["overflowing"] is None, fit
        font = page.locator("#results .match, #status").first.evaluate("n => parseFloat(getComputedStyle(n).fontSize)")
        assert font >= 14
        shot = tmp_path / f"desk-page-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        context.close()
    assert log.refused == [] and errors == [], (log.refused, errors)


def test_a_service_whose_result_limit_is_below_the_pages_pool_still_answers(chromium, tiny_model_dir, tiny_corpus_rows, tmp_path):
    import httpx

    from tests.reliability.service_process import ServiceProcess, service_env
    from tests.web.conftest import stored_rows

    service = ServiceProcess(service_env(tmp_path, tiny_model_dir, max_limit="5"), tmp_path / "service.log").start()
    context, page, _, errors = open_page(chromium, service.base)
    try:
        rows = stored_rows(tiny_corpus_rows)
        assert httpx.post(f"{service.base}/questions/bulk", json={"questions": rows}, timeout=120).status_code == 201
        shown = ask(page, tiny_corpus_rows[4]["text"])
        assert "Could not search" not in page.text_content("#status")
        assert shown and len(shown) <= 5
        assert errors == []
    finally:
        context.close()
        service.stop()


def test_the_list_is_the_services_answer_even_where_the_pair_distances_would_say_otherwise(desk_page, desk_api):
    """A question the model cannot read is answered by the stored questions with the same text,
    whatever min_pairs: the page must list what the service answered, not recount the pairs."""
    text = "💳🔥😀 ⚡"
    stored = desk_api.post("/questions", json={"text": text}).json()
    try:
        ask(desk_page, text)
        desk_page.locator("#min-pairs").focus()
        desk_page.keyboard.press("End")  # 25 of 25 pairs
        settle(desk_page)
        threshold, min_pairs = rule_of(desk_page)
        answer = api_ids(desk_api, text, threshold=threshold, min_pairs=min_pairs)
        assert stored["id"] in answer and min_pairs == 25
        assert shown_ids(desk_page) == answer, desk_page.text_content("#status")
    finally:
        desk_api.delete(f"/questions/{stored['id']}")


def test_a_failed_search_leaves_nothing_of_the_previous_question_on_screen(desk_page, tiny_corpus_rows):
    assert ask(desk_page, tiny_corpus_rows[4]["text"])
    desk_page.locator("#results .pick").first.click()
    assert desk_page.locator("#why-body").is_visible()
    desk_page.route("**/questions/similar", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"detail": "too busy, retry shortly"}'))
    desk_page.fill("#question", tiny_corpus_rows[7]["text"])
    desk_page.press("#question", "Enter")
    settle(desk_page)
    assert "Could not search: too busy, retry shortly" in desk_page.text_content("#status")
    assert shown_ids(desk_page) == []
    assert desk_page.locator("#why-body").is_hidden() and desk_page.locator("#near").is_hidden()
    assert desk_page.eval_on_selector("#map-overlay", "node => node.childElementCount") == 0
    desk_page.unroute("**/questions/similar")
    desk_page.script_errors[:] = [e for e in desk_page.script_errors if "503" not in e]  # the refused search


def test_keyboard_focus_stays_on_a_match_and_its_feedback_buttons(desk_page, tiny_corpus_rows):
    ask(desk_page, tiny_corpus_rows[4]["text"])
    desk_page.locator("#threshold").focus()
    desk_page.keyboard.press("End")  # the widest threshold: many matches
    settle(desk_page)
    assert len(shown_ids(desk_page)) >= 2
    focused_item = "() => document.activeElement.closest('li') && document.activeElement.closest('li').dataset.questionId"
    second = desk_page.locator("#results .pick").nth(1)
    second.focus()
    wanted = desk_page.evaluate(focused_item)
    desk_page.keyboard.press("Enter")  # selects it: the list re-renders
    assert desk_page.evaluate(focused_item) == wanted
    assert desk_page.evaluate("() => document.activeElement.classList.contains('pick')")
    duplicate = desk_page.locator(f'#results li[data-question-id="{wanted}"] [data-feedback="duplicate"]')
    duplicate.focus()
    desk_page.keyboard.press("Enter")
    desk_page.locator(f'#results li[data-question-id="{wanted}"] .feedback-status[data-kind="ok"]').wait_for()
    assert desk_page.evaluate("() => document.activeElement.dataset.feedback") == "duplicate"


def test_answers_keep_their_line_breaks_stored_text_is_isolated_and_long_questions_are_not_cut(
    desk_page, desk_api, tiny_corpus_rows
):
    steps = "1. Open the app.\n2. Tap Cards.\n\n3. Freeze the card."
    rtl = "my card \u202eis blocked"
    stored = desk_api.post("/questions", json={"text": rtl, "answer": steps, "external_id": "rtl \u202eid"}).json()
    try:
        ask(desk_page, rtl)
        item = desk_page.locator(f'#results li[data-question-id="{stored["id"]}"]')
        assert item.locator(".answer").evaluate("node => getComputedStyle(node).whiteSpace") == "pre-line"
        assert "\u2068rtl \u202eid\u2069" in item.locator(".facts").text_content()  # isolated from the page's words
        assert desk_page.get_attribute("#question", "maxlength") is None
        desk_page.fill("#question", "why " * 400)  # 1,600 characters: the service's 422 says so, nothing cut
        desk_page.press("#question", "Enter")
        settle(desk_page)
        assert "at most 1000 characters" in desk_page.text_content("#status")
        desk_page.script_errors[:] = [e for e in desk_page.script_errors if "422" not in e]  # the refused question
    finally:
        desk_api.delete(f"/questions/{stored['id']}")
