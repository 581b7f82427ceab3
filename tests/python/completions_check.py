"""Legacy text completions (`client.completions.create`) through Switchyard
with the official `openai` SDK: on the local model (whole, streamed, echo,
logprobs, the default of 16 tokens) and on a remote backend.

Usage: python completions_check.py BASE_URL

Exits 0 and prints "ok" when every check holds.
"""

import sys

import openai

from checks import refused_param


def main():
    client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=120)
    prompt = "The capital of France is"

    whole = client.completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-"), whole
    choice = whole.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length"), whole
    assert 0 < whole.usage.completion_tokens <= 6 and whole.usage.prompt_tokens >= 5, whole.usage

    chunks = list(
        client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == choice.text, (streamed, choice.text)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens, chunks[-1]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason], finishes

    echoed = client.completions.create(model="smollm2", prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + choice.text, echoed

    scored = client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == scored.usage.completion_tokens == len(logprobs.token_logprobs), logprobs
    assert "".join(logprobs.tokens) == scored.choices[0].text, logprobs
    assert all(len(alternatives) <= 2 for alternatives in logprobs.top_logprobs), logprobs
    assert logprobs.text_offset[0] == 0, logprobs

    default = client.completions.create(model="smollm2", prompt="Once upon a time", temperature=0)
    assert default.usage.completion_tokens <= 16, default.usage

    remote = client.completions.create(model="echo", prompt="hello there")
    assert remote.choices[0].text == " Echo: hello there", remote
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="echo", prompt="hello there", stream=True) if c.choices)
    assert streamed == " Echo: hello there", streamed

    for kwargs, param in [
        (dict(model="smollm2", prompt=prompt, suffix=" and so on."), "suffix"),
        (dict(model="smollm2", prompt=["a", "b"]), "prompt"),
        (dict(model="smollm2", prompt=prompt, logprobs=9), "logprobs"),
    ]:
        assert refused_param(lambda: client.completions.create(**kwargs)) == param, kwargs
    print("ok")


if __name__ == "__main__":
    main()
