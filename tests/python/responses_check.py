"""The Responses API (`client.responses`) through Switchyard with the
official `openai` SDK: a local model (a tiny random Qwen3.5 that thinks and
calls tools) and a remote backend (the cloud double's `echo`).

Usage: python responses_check.py BASE_URL LOCAL_MODEL REMOTE_MODEL

Exits 0 and prints "ok" when plain, streamed, function-tool (with its round
trip), structured-output and reasoning answers come back as Responses objects
and events, a remote answer is relayed, and what a local model cannot serve
is a 400 naming the field.
"""

import json
import sys
from typing import Literal

import openai
import pydantic

from checks import refused_param

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Trip(pydantic.BaseModel):
    city: Literal["Paris", "Lima"]
    days: int = pydantic.Field(ge=1, le=9)


def main():
    base_url, local, remote = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    plain = client.responses.create(model=local, input="Hi", instructions="Be brief.", max_output_tokens=8, temperature=0)
    assert plain.object == "response" and plain.id.startswith("resp_"), plain
    assert plain.status in ("completed", "incomplete") and isinstance(plain.output_text, str), plain
    assert plain.usage.input_tokens > 0 and 0 < plain.usage.output_tokens <= 8, plain.usage

    events = list(client.responses.create(model=local, input="Hi", instructions="Be brief.", max_output_tokens=8, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text == events[-1].response.output_text, (deltas, plain.output_text)
    assert [e.sequence_number for e in events] == list(range(len(events))), kinds

    # A function call, then its result back, answered.
    ask = [{"role": "user", "content": "Weather in Lima?"}]
    called = client.responses.create(
        model=local, input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        temperature=1.0, max_output_tokens=300,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather", called.output
    arguments = json.loads(calls[0].arguments)
    assert set(arguments) == {"city"} and len(arguments["city"]) <= 12, arguments
    streamed = list(
        client.responses.create(
            model=local, input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
            temperature=1.0, max_output_tokens=300, stream=True,
        )
    )
    pieces = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    done = [e.arguments for e in streamed if e.type == "response.function_call_arguments.done"]
    assert done and pieces == "".join(done), (pieces, done)
    turn_two = ask + [
        {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"temp_c": 18})},
    ]
    answered = client.responses.create(model=local, input=turn_two, tools=[WEATHER], tool_choice="none", max_output_tokens=6, temperature=0)
    assert isinstance(answered.output_text, str) and answered.usage.input_tokens > called.usage.input_tokens, answered

    # Structured output through the SDK's own helper.
    parsed = client.responses.parse(model=local, input="Plan a trip.", text_format=Trip, temperature=1.0, max_output_tokens=80)
    assert isinstance(parsed.output_parsed, Trip), parsed
    # The SDK's stream helper (it wants `response.completed`: an answer the
    # grammar ends, not one cut at max_output_tokens, which ends `response.incomplete`).
    with client.responses.stream(model=local, input="Plan a trip.", text_format=Trip, temperature=1.0, max_output_tokens=80) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Trip), final

    # Thinking: a reasoning item, then the answer.
    thought = client.responses.create(model=local, input="Hi", reasoning={"effort": "high"}, max_output_tokens=40, temperature=1.0)
    assert thought.output[0].type == "reasoning" and thought.usage.output_tokens_details.reasoning_tokens > 0, thought

    # Remote: relayed as the upstream wrote it.
    relayed = client.responses.create(model=remote, input="hello there")
    assert relayed.output_text == "Echo: hello there" and relayed.id == "resp_double", relayed
    events = list(client.responses.create(model=remote, input="hello there", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "Echo: hello there", events[-1]

    unique = {"format": {"type": "json_schema", "name": "u", "schema": {"type": "array", "uniqueItems": True}}}
    assert refused_param(lambda: client.responses.create(model=local, input="Hi", text=unique)) == "text.format.schema"
    try:
        client.responses.create(model=local, input="Hi", previous_response_id="resp_1")
    except openai.BadRequestError as err:
        body = err.body if isinstance(err.body, dict) else {}
        assert body.get("param", body.get("error", {}).get("param")) == "previous_response_id", err.body
    else:
        raise AssertionError("expected a 400 naming previous_response_id")
    print("ok")


if __name__ == "__main__":
    main()
