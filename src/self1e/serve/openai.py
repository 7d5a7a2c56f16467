"""OpenAI's chat-completions format on the app: ``POST /v1/chat/completions`` (and ``GET /v1/models``).

Plain functions from a request body to what the predictor's ``chat`` takes, and from its answer to
a chat completion (or to the chunks of a stream); the app's route only wires them to the model.

Request (the fields OpenAI's clients send; others are ignored, the few that would change the answer
and are not supported are refused)::

    {"model": any string (the server has one model and answers with its name),
     "messages": [{"role": "user", "content": [
                      {"type": "text", "text": "..."},
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]},
                  {"role": "assistant", "content": "..."}, {"role": "user", "content": "..."}],
     "max_tokens": 1..256 (or "max_completion_tokens"; default 64),
     "temperature": 0 or absent = greedy, 0 < t <= 2 = sampled (with "top_p", "seed"),
     "stream": false | true, "stream_options": {"include_usage": true}}

Exactly one image in the whole conversation, as a ``data:`` URL: the server fetches nothing, so an
http(s) URL is refused (422). The last message is the user's question; the earlier user and
assistant messages become the chat history (the image sits in the first user turn, where the model's
prompt puts it). System messages are refused: the checkpoint's prompt format fixes its own.

Answer: a standard ``chat.completion`` whose ``choices[0].message.content`` is the model's answer
(``[SEG]`` kept), with the extra field ``choices[0].message.segments``: one result per ``[SEG]``, in
order, as ``/v1/segment`` returns them (``text``, ``score``, ``empty``, ``pixels``, ``bbox``, COCO
``rle`` at the image's own size). ``usage`` counts the prompt's tokens (image tokens included) and the
generated ones (the closing stop token not counted). With ``stream: true`` the answer comes as
server-sent events in OpenAI's ``chat.completion.chunk`` format: the role, then the text in pieces,
then a last chunk with ``finish_reason`` and ``delta.segments``, then ``data: [DONE]``. The answer is
generated whole before the first chunk (the masks need the whole answer), so a stream is not faster
to its first word; errors are therefore always a plain JSON error, never a broken stream.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from self1e.serve.codec import RequestError, b64_bytes

DEFAULT_MAX_TOKENS = 64
MAX_TEMPERATURE = 2.0
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "stop", "logprobs", "audio", "prediction")


@dataclass
class ChatCompletionRequest:
    """What a chat-completions body asks for, checked: the encoded ``image`` (bytes of the data URL),
    the last user ``message``, the earlier turns as ``history``, and how to generate."""

    image: bytes
    message: str
    history: list[dict[str, str]]
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)  # {} greedy, else do_sample/temperature/top_p/seed
    stream: bool = False
    include_usage: bool = False


def _fail(message: str) -> RequestError:
    return RequestError(422, message)


def _image_bytes(part: dict, where: str) -> bytes:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url.strip():
        raise _fail(f"{where}: an image_url part needs {{\"image_url\": {{\"url\": \"data:image/...;base64,...\"}}}}")
    url = url.strip()
    if re.match(r"(?i)https?://", url):
        raise _fail(f"{where}: the image is a web address ({url[:80]}); this server fetches nothing, so send the "
                    "image itself as a data URL (data:image/png;base64,...)")
    if not url.startswith("data:") or ";base64," not in url.split(",", 1)[0] + ",":
        raise _fail(f"{where}: an image_url must be a base64 data URL (data:image/png;base64,...), got "
                    f"{url[:40]!r}")
    return b64_bytes(url, "image_url")


def _content(message: dict, where: str) -> tuple[str, list[bytes]]:
    """A message's text (its text parts joined by newlines) and the images among its parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _fail(f"{where}: 'content' must be a string or a list of content parts")
    texts, images = [], []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_bytes(part, f"{where}, part {k}"))
        else:
            raise _fail(f"{where}, part {k}: a content part must be {{\"type\": \"text\", \"text\": ...}} or "
                        f"{{\"type\": \"image_url\", ...}}, got type {kind!r}")
    return "\n".join(texts), images


def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _fail(f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}")
    return float(value)


def parse_request(body: Any, max_new_tokens: int) -> ChatCompletionRequest:
    """Check a chat-completions body (RequestError 422 naming the problem) and map it onto the
    predictor's chat: the last message is the question, the earlier ones its history."""
    if not isinstance(body, dict):
        raise _fail("the JSON body must be an object")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):
            raise _fail(f"'{name}' is not supported by this server (it segments and chats about one image)")
    if body.get("n") not in (None, 1):
        raise _fail(f"'n' must be 1 (one answer per request), got {body.get('n')!r}")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _fail("'response_format' is not supported: the answer is text (with 'segments' beside it)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    turns, images = [], []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _fail(f"messages[{k}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role in ("system", "developer"):
            raise _fail(f"messages[{k}]: {role} messages are not supported; the model's prompt format has its own "
                        "system turn (send user and assistant messages)")
        if role not in ("user", "assistant"):
            raise _fail(f"messages[{k}]: role must be 'user' or 'assistant', got {role!r}")
        text, found = _content(m, f"messages[{k}]")
        if found and role != "user":
            raise _fail(f"messages[{k}]: only a user message can hold the image")
        images += found
        turns.append({"role": role, "content": text})
    if len(images) != 1:
        raise _fail(f"the conversation holds {len(images)} images; this model looks at exactly one image per "
                    "conversation: send one image_url part (a data URL) in a user message")
    if turns[-1]["role"] != "user":
        raise _fail("the last message must be the user's (the question to answer)")
    if turns[0]["role"] != "user":
        raise _fail("the conversation must start with a user message")
    message = turns[-1]["content"]
    if not message.strip():
        raise _fail("the last user message has no text: ask a question or make a request")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = min(DEFAULT_MAX_TOKENS, max_new_tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= max_new_tokens:
        raise _fail(f"'max_tokens' must be a whole number between 1 and {max_new_tokens}, got {tokens!r}")
    temperature = _number(body, "temperature", 0.0, MAX_TEMPERATURE, 0.0)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _fail(f"'seed' must be a whole number, got {seed!r}")
    sampling: dict[str, Any] = {}
    if temperature > 0:
        if top_p <= 0:
            raise _fail("'top_p' must be above 0 when sampling")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "seed": seed}
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _fail(f"'stream' must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _fail("'stream_options' must be an object")
    return ChatCompletionRequest(images[0], message, turns[:-1], tokens, sampling, stream,
                                 bool(options.get("include_usage")))


def new_id() -> tuple[str, int]:
    """A completion's id and creation time (Unix seconds)."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def finish_reason(generated: int, max_tokens: int) -> str:
    """"length" when the answer used every token it was allowed (cut), else "stop"."""
    return "length" if generated >= max_tokens else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, created: int, model: str, text: str, segments: list[dict], finish: str,
               prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A ``chat.completion`` object; the masks in ``choices[0].message.segments``."""
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "segments": segments},
                         "finish_reason": finish, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": None}


def pieces(text: str) -> list[str]:
    """The text in stream pieces (a word with the spaces before it), which join back to ``text``."""
    return re.findall(r"\s*\S+|\s+$", text) or [text]


def stream_events(cid: str, created: int, model: str, text: str, segments: list[dict], finish: str,
                  prompt_tokens: int, completion_tokens: int, include_usage: bool) -> Iterator[str]:
    """Server-sent events of a finished answer in OpenAI's chunk format, ending with ``[DONE]``."""

    def chunk(delta: dict, reason: str | None = None, **extra) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}] if delta is not None else []
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, "system_fingerprint": None, **extra}
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces(text):
        if piece:
            yield chunk({"content": piece})
    yield chunk({"segments": segments}, finish)
    if include_usage:
        yield chunk(None, usage=usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


def models_list(name: str) -> dict[str, Any]:
    """``GET /v1/models``: the one model this server holds."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "self1e"}]}


def openapi_body() -> dict[str, Any]:
    """The route's request body for the OpenAPI schema (parsed by hand, see :func:`parse_request`)."""
    part = {"type": "object", "properties": {"type": {"type": "string", "enum": ["text", "image_url"]},
                                             "text": {"type": "string"},
                                             "image_url": {"type": "object",
                                                           "properties": {"url": {"type": "string"}}}}}
    message = {"type": "object", "required": ["role", "content"],
               "properties": {"role": {"type": "string", "enum": ["user", "assistant"]},
                              "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": part}]}}}
    props = {"model": {"type": "string"}, "messages": {"type": "array", "items": message},
             "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
             "seed": {"type": "integer"}, "stream": {"type": "boolean"}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["messages"], "properties": props}}}}}
