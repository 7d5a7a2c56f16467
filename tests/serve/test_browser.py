"""The web page in a real browser: headless Chromium, driven over the Chrome DevTools Protocol,
against the app on loopback (the tiny random model: its masks are noise, the page flow is what is
tested). Skipped when no Chromium is on PATH or websocket-client is not installed."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from .conftest import live_server

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = 30.0  # every wait in this test is bounded by this
KEPT_EVENTS = ("Network.requestWillBeSent", "Network.responseReceived", "Runtime.exceptionThrown",
               "Fetch.requestPaused")


def find_browser() -> str:
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if binary is None:
        pytest.skip(f"no Chromium: none of {', '.join(BROWSERS)} is on PATH (apt-get install chromium)")
    return binary


@contextlib.contextmanager
def chromium(binary, profile):
    """Headless Chromium on a free loopback debugging port; yields its DevTools websocket URL and
    kills it (and whatever it started) at the end."""
    log = profile / "stderr.txt"
    flags = ["--headless=new", "--no-sandbox", "--remote-debugging-port=0", f"--user-data-dir={profile / 'user'}",
             "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-extensions", "--disable-sync", "--disable-background-networking",
             "--disable-component-update", "--disable-default-apps", "--no-pings", "--no-proxy-server",
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1280,900"]
    with open(log, "wb") as err:
        proc = subprocess.Popen([binary, *flags, "about:blank"], stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while not (found := re.search(r"DevTools listening on (ws://\S+)", log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{binary} gave no DevTools URL (exit {proc.poll()}): "
                                     f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # its renderers etc.: the group it leads, by its pid
            os.killpg(proc.pid, signal.SIGKILL)


class Page:
    """One browser tab over a flattened CDP session, with the few helpers the test needs."""

    def __init__(self, websocket, url: str) -> None:
        self.lib = websocket
        self.ws = websocket.create_connection(url, timeout=WAIT_S, suppress_origin=True)
        self.ids = 0
        self.events: list[dict] = []
        self.session = None
        target = self.cmd("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.cmd("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.cmd(f"{domain}.enable")

    def _read(self, deadline: float) -> dict | None:
        self.ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = json.loads(self.ws.recv())
        except self.lib.WebSocketTimeoutException:
            return None
        if message.get("method") in KEPT_EVENTS:
            self.events.append(message)
        return message

    def cmd(self, method: str, **params):
        self.ids += 1
        sent = {"id": self.ids, "method": method, "params": params}
        if self.session:
            sent["sessionId"] = self.session
        self.ws.send(json.dumps(sent))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            reply = self._read(deadline)
            if reply and reply.get("id") == self.ids:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise AssertionError(f"no answer to {method} in {WAIT_S} s")

    def js(self, expression: str):
        out = self.cmd("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"{expression[:80]!r} threw: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait(self, expression: str, what: str):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.1)
        error = self.js("document.getElementById('error').textContent")
        raise AssertionError(f"timed out after {WAIT_S} s waiting for {what} (#error says: {error!r})")

    def event(self, method: str, match=lambda params: True) -> dict:
        """The first kept event ``method`` whose params ``match`` (waiting for it), removed from the list."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for e in self.events:
                if e["method"] == method and match(e["params"]):
                    self.events.remove(e)
                    return e["params"]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} event in {WAIT_S} s")
            self._read(min(deadline, time.monotonic() + 0.2))

    def click(self, selector: str, index: int = 0) -> None:
        """A real mouse click at the middle of the element (which must be visible and not covered)."""
        point = self.js(f"""(() => {{
            const e = document.querySelectorAll({json.dumps(selector)})[{index}];
            if (!e) return null;
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
            const hit = document.elementFromPoint(x, y);
            return hit && e.contains(hit) ? [x, y] : "covered";
        }})()""")
        assert isinstance(point, list), f"cannot click {selector}[{index}]: {point or 'not on the page'}"
        for kind in ("mousePressed", "mouseReleased"):
            self.cmd("Input.dispatchMouseEvent", type=kind, x=point[0], y=point[1], button="left", clickCount=1)

    def response_json(self, path: str, status: int = 200) -> dict:
        """The body of the page's (next unclaimed) response from ``path``, as the browser received it."""
        got = self.event("Network.responseReceived", lambda p: p["response"]["url"].endswith(path))
        assert got["response"]["status"] == status, got["response"]
        body = self.cmd("Network.getResponseBody", requestId=got["requestId"])
        return json.loads(base64.b64decode(body["body"]) if body["base64Encoded"] else body["body"])

    def paused_request(self) -> tuple[str, dict]:
        """The next request held by Fetch: (its id, its JSON body)."""
        paused = self.event("Fetch.requestPaused")
        request = paused["request"]
        data = request.get("postData")
        if data is None:
            data = b"".join(base64.b64decode(x.get("bytes", "")) for x in request.get("postDataEntries", []))
        return paused["requestId"], json.loads(data)

    def fulfil(self, request_id: str, body: dict) -> None:
        self.cmd("Fetch.fulfillRequest", requestId=request_id, responseCode=200,
                 responseHeaders=[{"name": "content-type", "value": "application/json"}],
                 body=base64.b64encode(json.dumps(body).encode()).decode("ascii"))


IMAGE_SRC = """(() => { const i = document.getElementById("result-img");
    return !i.hidden && i.complete && i.naturalWidth > 0 ? i.src : null; })()"""
LEGEND = """[...document.querySelectorAll("#legend .legend-item")].map((li) => ({
    colour: getComputedStyle(li.querySelector(".swatch")).backgroundColor,
    text: li.querySelector(".text").textContent, meta: li.querySelector(".meta").textContent,
    png: li.querySelector("a.mask-link").href}))"""
TURNS = ("[...document.querySelectorAll('#chat-log .turn')]"
         ".map((t) => [t.className, t.querySelector('.said').textContent])")


def rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*bytes.fromhex(colour[1:]))


def check_legend(page: Page, body: dict) -> None:
    """The legend shows each result: its colour, text, score, pixel count or 'no target', mask PNG."""
    legend = page.js(LEGEND)
    assert len(legend) == len(body["results"])
    for row, r in zip(legend, body["results"]):
        assert row["colour"] == rgb(r["colour"]) and row["text"] == r["text"] and row["png"] == r["mask_png"]
        score = float(re.search(r"score (\d+\.\d+)", row["meta"]).group(1))
        assert abs(score - r["score"]) <= 0.0006, row
        assert ("no target" in row["meta"]) == r["empty"], row
        assert r["empty"] or f"{r['pixels']:,} pixels" in row["meta"], row
    assert page.js("document.getElementById('download-rle').getClientRects().length > 0") == bool(body["results"])


def test_the_page_segments_chats_and_reports_errors(predictor, tmp_path):
    websocket = pytest.importorskip("websocket", reason="websocket-client is missing: pip install websocket-client")
    if not hasattr(websocket, "create_connection"):
        pytest.skip("the 'websocket' module here is not websocket-client: pip install websocket-client")
    binary = find_browser()
    with live_server(predictor) as (base, _), chromium(binary, tmp_path) as devtools:
        page = Page(websocket, devtools)
        try:
            page.cmd("Page.navigate", url=base + "/")
            examples = page.js("fetch('/v1/examples').then((r) => r.json())")
            info = page.js("fetch('/v1/info').then((r) => r.json())")
            count = page.wait(f"document.querySelectorAll('#gallery .example img').length === {len(examples)} && "
                              "[...document.querySelectorAll('#gallery .example img')].every((i) => i.naturalWidth) "
                              f"&& {len(examples)}", "the gallery")
            assert count == len(examples) >= 4
            note = page.wait("document.getElementById('model-note').querySelector('strong') && "
                             "document.getElementById('model-note').textContent", "the model note")
            assert info["model"]["note"] in note and "tiny" in note
            assert f"Up to {info['limits']['max_texts']} expressions" in page.js("document.body.textContent")

            # An example: the current image, with its expressions and questions as chips.
            example = examples[1]
            page.click("#gallery .example", 1)
            src = page.wait(IMAGE_SRC, "the example in #result-img")
            assert src.startswith("data:image/png")
            assert page.js("document.getElementById('result-img').naturalWidth") == 224
            assert page.js("[...document.querySelectorAll('#expression-chips .chip')].map((c) => c.textContent)") \
                == example["expressions"]
            page.click("#expression-chips .chip", 0)
            page.click("#expression-chips .chip", 2)
            page.click("#expressions")
            page.js("(() => { const t = document.getElementById('expressions'); "
                    "t.selectionStart = t.selectionEnd = t.value.length; })()")
            page.cmd("Input.insertText", text="\nthe smallest star")
            texts = [example["expressions"][0], example["expressions"][2], "the smallest star"]
            assert page.js("document.getElementById('expressions').value") == "\n".join(texts)

            # Segment: the overlay and one legend row per expression in the API's colours.
            page.click("#segment-btn")
            page.wait(f"document.querySelectorAll('#legend .legend-item').length === {len(texts)}", "the legend")
            body = page.response_json("/v1/segment")
            assert [r["text"] for r in body["results"]] == texts
            assert page.wait(f"({IMAGE_SRC}) === {json.dumps(body['overlay'])}", "the overlay")
            check_legend(page, body)
            page.click("#view-toggle")
            assert page.wait(f"({IMAGE_SRC}) === {json.dumps(body['mask_view'])}", "the mask-only view")
            assert page.js("document.getElementById('view-toggle').getAttribute('aria-pressed')") == "true"
            page.click("#view-toggle")
            assert page.wait(f"({IMAGE_SRC}) === {json.dumps(body['overlay'])}", "the overlay again")
            coco = json.loads(page.js("fetch(document.getElementById('download-rle').href).then((r) => r.text())"))
            assert coco == {"width": body["width"], "height": body["height"], "annotations": [
                {"text": r["text"], "segmentation": r["rle"], "bbox": r["bbox"], "score": r["score"]}
                for r in body["results"]]}
            assert page.js("document.getElementById('download-rle').download").endswith(".json")

            # Chat, turn 1 (the model itself): the question chip, the answer in the log.
            page.click("#question-chips .chip", 0)
            assert page.js("document.getElementById('chat-input').value") == example["questions"][0]
            page.click("#chat-btn")
            page.wait("document.querySelectorAll('#chat-log .turn.model').length === 1", "the model's answer")
            first = page.response_json("/v1/chat")
            assert page.js(TURNS) == [["turn user", example["questions"][0]],
                                      ["turn model", first["answer"] or "(an empty answer)"]]
            check_legend(page, first)
            assert page.wait(f"({IMAGE_SRC}) === {json.dumps(first['overlay'])}", "the chat's picture")

            # Turn 2 sends turn 1's history back; held while the page is busy, then answered with two [SEG]
            # (the random model never writes one) to check that every mask gets a legend row and a swatch.
            page.cmd("Fetch.enable", patterns=[{"urlPattern": "*/v1/chat", "requestStage": "Request"}])
            page.click("#chat-input")
            page.cmd("Input.insertText", text="Please segment the two largest shapes.")
            page.click("#chat-btn")
            held, sent = page.paused_request()
            assert sent["history"] == first["history"] and sent["message"] == "Please segment the two largest shapes."
            assert page.js("[document.getElementById('chat-btn').disabled, "
                           "document.getElementById('segment-btn').disabled, "
                           "document.getElementById('chat-btn').getAttribute('aria-busy'), "
                           "document.getElementById('chat-btn').textContent]") == [True, True, "true", "Thinking…"]
            two = {**body, "answer": "Sure, [SEG] and [SEG].", "history": [*first["history"], {"role": "user",
                   "content": sent["message"]}, {"role": "assistant", "content": "Sure, [SEG] and [SEG]."}],
                   "results": body["results"][:2]}
            page.fulfil(held, two)
            page.wait("document.querySelectorAll('#chat-log .turn.model').length === 2", "the second answer")
            check_legend(page, two)
            assert page.js("[...document.querySelectorAll('#chat-log .turn.model')[1].querySelectorAll('.swatch')]"
                           ".map((s) => getComputedStyle(s).backgroundColor)") == [rgb(r["colour"]) for r in
                                                                                 two["results"]]
            assert page.js("[document.getElementById('chat-btn').disabled, "
                           "document.getElementById('chat-btn').textContent]") == [False, "Send"]

            # A new image resets the conversation; so does "new conversation" (the next turn sends no history).
            page.click("#gallery .example", 0)
            page.wait(f"({IMAGE_SRC}) !== {json.dumps(body['overlay'])} && ({IMAGE_SRC})", "the new example")
            assert page.js(TURNS) == [] and page.js(LEGEND) == []
            for step in ("new image", "new conversation"):
                page.click("#question-chips .chip", 1)
                page.click("#chat-btn")
                held, sent = page.paused_request()
                assert sent["history"] == [], step
                page.fulfil(held, first)
                page.wait("document.querySelectorAll('#chat-log .turn.model').length === 1", f"answer after {step}")
                page.click("#chat-reset")
                assert page.js(TURNS) == [], step
            page.cmd("Fetch.disable")

            # A corrupt upload: the server's own message reaches #error.
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"this is not a picture at all")
            node = page.cmd("Runtime.evaluate", expression="document.getElementById('file-input')")["result"]
            page.cmd("DOM.setFileInputFiles", files=[str(broken)], objectId=node["objectId"])
            page.wait("document.getElementById('caption').textContent.includes('cannot show')", "the upload")
            page.click("#segment-btn")
            shown = page.wait("!document.getElementById('error').hidden && "
                              "document.getElementById('error').textContent", "the error message")
            refused = page.response_json("/v1/segment", status=422)["error"]["message"]
            assert "cannot read the uploaded image" in refused and refused in shown and "HTTP 422" in shown
            page.click("#gallery .example", 2)
            page.wait("document.getElementById('error').hidden", "the error to clear")

            # Drag and drop (a drop event carrying a file, as the browser builds it for a real drag).
            page.js(f"""fetch({json.dumps(examples[3]["image"])}).then((r) => r.blob()).then((b) => {{
                const data = new DataTransfer();
                data.items.add(new File([b], "dropped.png", {{type: "image/png"}}));
                document.getElementById("drop").dispatchEvent(new DragEvent("drop", {{dataTransfer: data,
                    bubbles: true, cancelable: true}}));
            }})""")
            page.wait(f"document.getElementById('caption').textContent === 'dropped.png' && ({IMAGE_SRC})", "the drop")
            assert not page.js("document.querySelectorAll('#expression-chips .chip, #gallery [aria-pressed=true]')"
                               ".length")

            # Nothing but this server on loopback; no script errors.
            urls = {e["params"]["request"]["url"] for e in page.events if e["method"] == "Network.requestWillBeSent"}
            assert urls and all(u.startswith((base + "/", "data:", "blob:", "about:")) for u in urls), urls
            thrown = [e["params"] for e in page.events if e["method"] == "Runtime.exceptionThrown"]
            assert not thrown, thrown
        finally:
            page.ws.close()
