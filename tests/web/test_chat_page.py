"""The chat page at ``/`` in headless Chromium, against the real server (tiny random model)."""

from __future__ import annotations

import json

import jsonschema
from live_server import MODEL

# counts how often the assistant's text changed, so a streamed answer is told from one arriving whole
_WATCH_UPDATES = """() => {
  window.__updates = 0;
  new MutationObserver(() => { window.__updates++; })
    .observe(document.getElementById('messages'), {subtree: true, characterData: true, childList: true});
}"""


def _open(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")


def _settings(page, **values: str) -> None:
    for name, value in values.items():
        page.fill(f"#{name}", value)


def test_chat_streams_the_servers_answer(server, page, screenshot) -> None:
    _open(page, server.url)
    assert page.text_content("#model-name") == MODEL
    _settings(page, temperature="0", max_tokens="40", top_p="1")
    page.evaluate(_WATCH_UPDATES)
    page.fill("#prompt", "Tell me about pagodas.")
    page.click("#send")
    reply = page.wait_for_selector(".message.assistant[data-state='done']", timeout=60_000)
    text = reply.query_selector(".content").text_content()
    # greedy: the page shows exactly what the API answers for the same conversation
    expected = server.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about pagodas."}], temperature=0,
        top_p=1, max_tokens=40)
    assert text == expected.choices[0].message.content
    assert reply.get_attribute("data-finish") == expected.choices[0].finish_reason
    # more than one piece: a reader that falls behind a fast engine gets several steps' tokens in one event
    assert page.evaluate("window.__updates") > 1, "the answer did not arrive piece by piece"
    assert f"{expected.usage.completion_tokens} tokens" in page.text_content("#chat-stats")
    # the next turn sends the whole conversation
    page.fill("#prompt", "And one more thing.")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll(\".message.assistant[data-state='done']\").length == 2",
                           timeout=60_000)
    second = page.query_selector_all(".message.assistant .content")[1].text_content()
    expected2 = server.openai().chat.completions.create(
        model=MODEL, temperature=0, top_p=1, max_tokens=40,
        messages=[{"role": "user", "content": "Tell me about pagodas."}, {"role": "assistant", "content": text},
                  {"role": "user", "content": "And one more thing."}])
    assert second == expected2.choices[0].message.content
    screenshot(page, "chat")
    assert page.urls_requested and all(u.startswith(server.url + "/") for u in page.urls_requested)


def test_stop_button_ends_the_request(server, page) -> None:
    _open(page, server.url)
    _settings(page, max_tokens="400", temperature="1")
    page.fill("#prompt", "Write a long story.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.message.assistant .content').textContent.length > 3",
                           timeout=60_000)
    page.click("#stop")
    reply = page.wait_for_selector(".message.assistant[data-state='stopped']", timeout=30_000)
    assert reply.query_selector(".content").text_content()
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    server.wait_idle()  # the server aborted the request: nothing runs, every block is back


def test_json_schema_box_constrains_the_answer(server, page) -> None:
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer", "count"], "additionalProperties": False}
    _open(page, server.url)
    _settings(page, temperature="1", seed="3", max_tokens="60", schema=json.dumps(schema))
    page.fill("#prompt", "Answer in JSON.")
    page.click("#send")
    reply = page.wait_for_selector(".message.assistant[data-state='done']", timeout=60_000)
    jsonschema.validate(json.loads(reply.query_selector(".content").text_content()), schema)


def test_invalid_schema_is_reported_not_sent(server, page) -> None:
    _open(page, server.url)
    _settings(page, schema="{not json")
    page.fill("#prompt", "hello")
    page.click("#send")
    page.wait_for_function("document.getElementById('schema-error').textContent.length > 0")
    assert "not valid JSON" in page.text_content("#schema-error")
    assert page.query_selector(".message") is None


def test_server_errors_are_shown(server, page) -> None:
    _open(page, server.url)
    _settings(page, top_p="7")  # the server answers 400
    page.fill("#prompt", "hello")
    page.click("#send")
    reply = page.wait_for_selector(".message.assistant[data-state='error']", timeout=30_000)
    assert "top_p" in reply.text_content()


def test_chat_page_asks_for_the_key(server, page) -> None:
    url = server.urls["keyed"]
    page.goto(url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    page.wait_for_function("document.getElementById('key-message').textContent.includes('refused')")
    page.fill("#key-input", "test-key")
    page.click("#key-submit")
    page.wait_for_selector("body[data-ready='1']")
    assert page.text_content("#model-name") == MODEL
    _settings(page, max_tokens="8")
    page.fill("#prompt", "hi")
    page.click("#send")
    page.wait_for_selector(".message.assistant[data-state='done']", timeout=60_000)


def test_image_tab_generates_with_a_sampler_preset(server, page, screenshot) -> None:
    from pagoda.diffusion.presets import PRESETS

    url = server.urls["images"]
    _open(page, url)
    assert page.is_visible("#tab-image")
    page.click("#tab-image")
    assert page.is_visible("#image-panel") and not page.is_visible("#chat-panel")
    options = page.eval_on_selector_all("#image-sampler option", "os => os.map(o => o.value)")
    assert options == list(PRESETS)
    page.fill("#image-prompt", "a red pagoda")
    page.select_option("#image-sampler", "DDIM Trailing")
    page.fill("#image-steps", "3")
    page.fill("#image-seed", "11")
    page.click("#image-generate")
    page.wait_for_selector("#images img", timeout=120_000)
    src = page.get_attribute("#images img", "src")
    assert "DDIM Trailing, 3 steps" in page.text_content("#image-status")
    # the same request through the API gives the same image
    expected = server.post("/v1/images/generations", name="images", json={
        "prompt": "a red pagoda", "sampler": "DDIM Trailing", "steps": 3, "seed": 11, "n": 1,
        "guidance_scale": 7.5, "response_format": "b64_json"}).json()
    assert src == "data:image/png;base64," + expected["data"][0]["b64_json"]
    screenshot(page, "image")


def test_the_image_tab_is_hidden_without_an_image_model(server, page) -> None:
    _open(page, server.url)
    assert not page.is_visible("#tab-image") and not page.is_visible("#image-panel")
    assert page.is_visible("#settings") and page.is_visible("#chat-panel")
    # the settings sit beside the conversation, not below it
    assert page.eval_on_selector("#settings", "e => e.getBoundingClientRect().top") < 100
