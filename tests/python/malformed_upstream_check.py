"""The official `openai` Python SDK against upstream answers that are not
OpenAI's format, relayed through Switchyard.

Usage: python malformed_upstream_check.py BASE_URL

Exits 0 and prints "ok" when a completion without `choices` raises a 502
`InternalServerError` (not a completion whose `choices` is None), and a stream
that turns to garbage after its first chunks raises an `APIError` with
Switchyard's message (not a JSON decode error).
"""

import sys

import openai


def main() -> None:
    client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hello"}]

    try:
        completion = client.chat.completions.create(model="hello-world", messages=messages)
    except openai.InternalServerError as err:
        assert err.status_code == 502, err.status_code
        assert err.body["code"] == "upstream_invalid_response", err.body
    else:
        raise AssertionError(f"a completion without choices was accepted: {completion!r}")

    received = []
    try:
        for chunk in client.chat.completions.create(model="broken-mid-stream", messages=messages, stream=True):
            received.append(chunk)
    except openai.APIError as err:
        assert "invalid response" in str(err), err
    else:
        raise AssertionError("a stream that broke must raise")
    assert len(received) == 2 and received[1].choices[0].delta.content == "Echo: ", received
    print("ok")


if __name__ == "__main__":
    main()
