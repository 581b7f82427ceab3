"""The official `openai` SDK against Switchyard's pass-through of the API's
other endpoints (files, audio, moderations), the cloud double behind it.

Usage: python passthrough_check.py BASE_URL API_KEY

Exits 0 and prints "ok" when a file uploads (multipart) and downloads byte
for byte, an audio file is transcribed (multipart), a moderation (JSON) is
answered, and a missing file is the upstream's 404, all through the SDK's
own calls.
"""

import io
import sys

import openai


def main():
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)

    data = bytes(range(256)) * 1000 + b'{"custom_id": "a"}\n'
    raw = client.files.with_raw_response.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    assert raw.headers.get("x-ratelimit-remaining-requests") == "4999", dict(raw.headers)
    assert raw.headers.get("x-switchyard-backend") == "echo", dict(raw.headers)
    uploaded = raw.parse()
    assert uploaded.bytes == len(data) and uploaded.filename == "batch.jsonl" and uploaded.purpose == "batch", uploaded
    assert client.files.content(uploaded.id).read() == data

    audio = b"RIFF" + bytes(5000)
    heard = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", io.BytesIO(audio)))
    assert heard.text == f"heard {len(audio)} bytes of hello.wav with whisper-1", heard

    moderation = client.moderations.create(model="omni-moderation-latest", input="a plain sentence")
    assert moderation.results[0].flagged is False, moderation

    try:
        client.files.content("file-missing")
    except openai.NotFoundError as err:
        assert "file-missing" in str(err), err
    else:
        raise AssertionError("expected the upstream's 404")
    print("ok")


if __name__ == "__main__":
    main()
