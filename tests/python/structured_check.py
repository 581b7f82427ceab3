"""Tool calls and structured outputs through Switchyard with the official
`openai` SDK, on a local model (a tiny random checkpoint: only the daemon's
constraint makes its output valid).

Usage: python structured_check.py BASE_URL MODEL [thinks]

Exits 0 and prints "ok" when: a forced tool call, whole and streamed, names
the tool and its arguments validate; the call's result goes back in a second
turn that is answered; `required` calls validate; `response_format` with a
schema is parsed by the SDK's own `parse` and `stream` helpers; json_object
parses; and bad `tool_choice` values and an unsupported schema keyword are
OpenAI's 400s naming the param or keyword.
"""

import json
import sys
from typing import Literal

import openai
import pydantic

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


class Trip(pydantic.BaseModel):
    city: Literal["Paris", "Lima"]
    days: int = pydantic.Field(ge=1, le=9)


def check_arguments(name, arguments):
    args = json.loads(arguments)
    if name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f"), args
        assert isinstance(args["city"], str) and len(args["city"]) <= 12, args
    else:
        assert name == "get_time", name
        assert set(args) == {"zone"} and -12 <= args["zone"] <= 12, args
    return args


def streamed_calls(chunks):
    """The tool calls a stream's deltas add up to, and its finish reason."""
    calls, finish = {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert call["id"] is None, "an id comes once"
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    return [calls[i] for i in sorted(calls)], finish


def expect_400(call, says):
    try:
        call()
    except openai.BadRequestError as err:
        # The SDK keeps the error object (`{"message", "type", "param", "code"}`).
        body = err.body if isinstance(err.body, dict) else {}
        body = body.get("error", body)
        text = json.dumps(body)
        assert says in text, (says, text)
        return body
    raise AssertionError(f"expected a 400 saying {says!r}")


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    thinks = sys.argv[3:] == ["thinks"]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    sampling = dict(temperature=1.0, seed=7, max_tokens=400)

    # A forced call, whole.
    whole = client.chat.completions.create(model=model, messages=ask, tools=[WEATHER, CLOCK], tool_choice=named, **sampling)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", whole
    calls = choice.message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls), whole
    assert calls[0].id.startswith("call_") and calls[0].type == "function", calls
    check_arguments("get_weather", calls[0].function.arguments)
    assert choice.message.content is None, choice.message

    # The same call streamed: the deltas add up to the same call.
    chunks = list(
        client.chat.completions.create(model=model, messages=ask, tools=[WEATHER, CLOCK], tool_choice=named, stream=True, **sampling)
    )
    streamed, finish = streamed_calls(chunks)
    assert finish == "tool_calls", chunks[-1]
    assert [(c["name"], c["arguments"]) for c in streamed] == [(c.function.name, c.function.arguments) for c in calls], (streamed, calls)
    assert all(c["id"] and c["id"].startswith("call_") for c in streamed), streamed
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > len(streamed), "arguments come in pieces"

    # The round trip: the call and its result go back, and the model answers.
    turn_two = ask + [
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temp_c": 21})},
    ]
    answer = client.chat.completions.create(model=model, messages=turn_two, tools=[WEATHER, CLOCK], tool_choice="none", max_tokens=8, temperature=0)
    assert answer.choices[0].message.content is not None and not answer.choices[0].message.tool_calls, answer
    assert answer.choices[0].finish_reason in ("stop", "length"), answer
    # The tools are still shown, and the first turn's state is reused.
    assert answer.usage.prompt_tokens > whole.usage.prompt_tokens, (answer.usage, whole.usage)
    assert answer.usage.prompt_tokens_details.cached_tokens >= whole.usage.prompt_tokens, (answer.usage, whole.usage)
    chunks = list(
        client.chat.completions.create(model=model, messages=turn_two, tools=[WEATHER, CLOCK], tool_choice="none", max_tokens=8, temperature=0, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content, (text, answer)
    # Under auto the model may call again or answer; either way the reply is well formed.
    again = client.chat.completions.create(model=model, messages=turn_two, tools=[WEATHER, CLOCK], **sampling)
    for call in again.choices[0].message.tool_calls or []:
        check_arguments(call.function.name, call.function.arguments)

    # `required`: a call from the first token, to an offered tool, valid.
    for seed in range(3):
        required = client.chat.completions.create(
            model=model, messages=ask, tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False,
            temperature=1.0, seed=seed, max_tokens=400,
        )
        calls = required.choices[0].message.tool_calls
        assert len(calls) == 1 and required.choices[0].finish_reason == "tool_calls", required
        check_arguments(calls[0].function.name, calls[0].function.arguments)
    # Several calls: each its own id, each valid (a random model may call on
    # until max_tokens: then the last call is cut off, as OpenAI's would be).
    parallel = client.chat.completions.create(
        model=model, messages=ask, tools=[WEATHER, CLOCK], tool_choice="required", temperature=1.0, seed=3, max_tokens=400
    )
    calls = parallel.choices[0].message.tool_calls
    finished = calls if parallel.choices[0].finish_reason == "tool_calls" else calls[:-1]
    assert parallel.choices[0].finish_reason in ("tool_calls", "length") and finished, parallel
    for call in finished:
        check_arguments(call.function.name, call.function.arguments)
    assert len({c.id for c in calls}) == len(calls), calls

    # Thinking on (a model that thinks): it thinks freely (here within the
    # backend's budget of 8 tokens), then the call is held to the tools.
    thought = thinks and client.chat.completions.create(
        model=model, messages=ask, tools=[WEATHER, CLOCK], tool_choice=named,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}}, **sampling
    )
    if thinks:
        assert thought.choices[0].message.model_extra.get("reasoning_content"), thought
        assert thought.usage.completion_tokens_details.reasoning_tokens > 0, thought.usage
        calls = thought.choices[0].message.tool_calls
        assert calls and thought.choices[0].finish_reason == "tool_calls", thought
        check_arguments("get_weather", calls[0].function.arguments)

    # Structured outputs through the SDK's own helpers.
    trip_ask = [{"role": "user", "content": "Plan a trip as JSON."}]
    for seed in range(3):
        parsed = client.chat.completions.parse(model=model, messages=trip_ask, response_format=Trip, temperature=1.0, seed=seed, max_tokens=60)
        assert isinstance(parsed.choices[0].message.parsed, Trip), parsed
    with client.chat.completions.stream(model=model, messages=trip_ask, response_format=Trip, temperature=1.0, seed=5, max_tokens=60) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Trip), final
    anything = client.chat.completions.create(
        model=model, messages=trip_ask, response_format={"type": "json_object"}, temperature=0, max_tokens=200
    )
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict), anything

    # OpenAI's 400s.
    create = client.chat.completions.create
    body = expect_400(
        lambda: create(model=model, messages=ask, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "nope",
    )
    assert body["param"] == "tool_choice" and body["type"] == "invalid_request_error", body
    expect_400(lambda: create(model=model, messages=ask, tools=[WEATHER], tool_choice="sometimes"), "Supported values")
    expect_400(lambda: create(model=model, messages=ask, tool_choice="auto"), "only allowed when 'tools'")
    expect_400(lambda: create(model=model, messages=ask, tools=[{"type": "function", "function": {"name": "bad name"}}]), "pattern")
    unique = {"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "array", "uniqueItems": True}}}
    body = expect_400(lambda: create(model=model, messages=ask, response_format=unique), "uniqueItems")
    assert body["param"] == "response_format.json_schema.schema", body
    print("ok")


if __name__ == "__main__":
    main()
