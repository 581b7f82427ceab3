"""Helpers the SDK check scripts share."""

import openai


def refused_param(call):
    """The `param` of the OpenAI 400 that `call` must raise."""
    try:
        call()
    except openai.BadRequestError as err:
        body = err.body if isinstance(err.body, dict) else {}
        # The SDK keeps the error object; some versions keep the whole body.
        return body.get("param", body.get("error", {}).get("param"))
    raise AssertionError("expected a 400")
