"""Embeddings through Switchyard with the official `openai` SDK: a local
embedding model (the tiny random Qwen3 with last-token pooling) and a remote
backend (the cloud double).

Usage: python embeddings_check.py BASE_URL LOCAL_MODEL

Exits 0 and prints "ok" when local embeddings come back normalised, the same
in base64 (the SDK's default) and float, a batch equals its items one by one,
`dimensions` truncates and renormalises, token ids are read, a remote
embedding model is passed through, and bad inputs are 400s naming the param.
"""

import math
import sys

import openai

from checks import refused_param


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def close(a, b, tolerance=1e-6):
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b))


def main():
    base_url, local = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    one = client.embeddings.create(model=local, input="hello world")
    vector = one.data[0].embedding
    assert one.object == "list" and len(one.data) == 1 and one.model == local, one
    assert len(vector) == 64 and abs(norm(vector) - 1) < 1e-5, (len(vector), norm(vector))
    assert one.usage.prompt_tokens > 0, one.usage
    floats = client.embeddings.create(model=local, input="hello world", encoding_format="float").data[0].embedding
    assert close(floats, vector), "base64 and float agree"

    texts = ["a b", "the quick brown fox", "c"]
    batch = client.embeddings.create(model=local, input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2], batch
    for text, item in zip(texts, batch.data):
        alone = client.embeddings.create(model=local, input=text, encoding_format="float").data[0].embedding
        assert close(item.embedding, alone), text

    short = client.embeddings.create(model=local, input="hello world", dimensions=16, encoding_format="float").data[0].embedding
    prefix = floats[:16]
    assert len(short) == 16 and close(short, [x / norm(prefix) for x in prefix], 1e-5), short

    ids = client.embeddings.create(model=local, input=[[5, 6, 7], [8, 9]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5, ids

    remote = client.embeddings.create(model="text-embedding-3-small", input=["abc", "de"], encoding_format="float")
    assert [d.embedding for d in remote.data] == [[3.0, 1.0, 0.5, -0.25], [2.0, 1.0, 0.5, -0.25]], remote
    remote64 = client.embeddings.create(model="text-embedding-3-small", input="abc")
    assert remote64.data[0].embedding == [3.0, 1.0, 0.5, -0.25], remote64

    for kwargs, param in [
        (dict(model=local, input=[]), "input"),
        (dict(model=local, input="x", dimensions=1000), "dimensions"),
        (dict(model=local, input=[[999999]]), "input"),
        (dict(model="chat", input="x"), "model"),
    ]:
        assert refused_param(lambda: client.embeddings.create(**kwargs)) == param, kwargs
    print("ok")


if __name__ == "__main__":
    main()
