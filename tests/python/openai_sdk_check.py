"""The official `openai` Python SDK, pointed at a running Switchyard.

Usage: python openai_sdk_check.py BASE_URL API_KEY

Exits 0 and prints "ok" when a non-streamed chat, a streamed chat (with and
without usage) and typed errors all behave as they would against OpenAI itself.
"""

import sys

import openai


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello from the sdk"}]

    completion = client.chat.completions.create(model="auto", messages=messages)
    assert completion.choices[0].message.content == "Echo: hello from the sdk", completion
    assert completion.choices[0].finish_reason == "stop", completion
    assert completion.usage is not None and completion.usage.completion_tokens == 5, completion.usage

    raw = client.chat.completions.with_raw_response.create(model="echo", messages=messages)
    assert raw.headers["x-switchyard-backend"] == "echo", dict(raw.headers)
    assert raw.headers.get("x-request-id"), dict(raw.headers)

    chunks = list(client.chat.completions.create(model="echo", messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello from the sdk", text
    assert all(c.usage is None for c in chunks), "usage was not asked for"
    assert chunks[-1].choices[0].finish_reason == "stop", chunks[-1]

    chunks = list(
        client.chat.completions.create(
            model="echo", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 4, chunks[-1]

    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(model="echo", messages=[]))
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(model="echo", messages=messages, max_tokens=10**12))
    expect_error(openai.NotFoundError, 404, lambda: client.chat.completions.create(model="no-such-model", messages=messages))
    expect_error(openai.RateLimitError, 429, lambda: client.chat.completions.create(model="rate-limited", messages=messages))
    expect_error(openai.InternalServerError, 500, lambda: client.chat.completions.create(model="server-error", messages=messages))
    bad_key = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
    expect_error(openai.AuthenticationError, 401, lambda: bad_key.chat.completions.create(model="echo", messages=messages))

    # A stream the upstream cut mid-way surfaces as an APIError, not as a short answer.
    try:
        list(client.chat.completions.create(model="cut-stream", messages=messages, stream=True))
    except openai.APIError as err:
        assert "closed the stream" in str(err) or "broke" in str(err), err
    else:
        raise AssertionError("a cut stream must raise")

    models = [m.id for m in client.models.list()]
    assert "auto" in models and "echo" in models, models
    print("ok")


def expect_error(kind, status, call) -> None:
    try:
        call()
    except kind as err:
        assert err.status_code == status, (kind, err.status_code)
        assert isinstance(err.body, dict) and err.body.get("message"), err.body
        return
    raise AssertionError(f"expected {kind.__name__}")


if __name__ == "__main__":
    main()
