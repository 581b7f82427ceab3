// The official openai Node SDK, unchanged, against a running Switchyard:
// chat, the Responses API (plain, streamed, a function tool, structured
// output, a remote answer relayed), legacy completions, embeddings (local and
// remote, base64 as the SDK asks by default), and files and audio through the
// pass-through.
//
// Usage: node check.mjs BASE_URL LOCAL_MODEL EMBEDDING_MODEL REMOTE_MODEL
// Prints "ok" when every check holds.

import assert from "node:assert/strict";
import OpenAI, { toFile } from "openai";

const [baseURL, local, embed, remote] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });

const chat = await client.chat.completions.create({
  model: local, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0,
});
assert.equal(chat.object, "chat.completion");
assert.equal(typeof chat.choices[0].message.content, "string");
let streamed = "";
for await (const chunk of await client.chat.completions.create({
  model: local, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0, stream: true,
})) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
}
assert.equal(streamed, chat.choices[0].message.content);

const response = await client.responses.create({ model: local, input: "Hi", max_output_tokens: 6, temperature: 0 });
assert.equal(response.object, "response");
assert.equal(typeof response.output_text, "string");
const events = [];
for await (const event of await client.responses.create({ model: local, input: "Hi", max_output_tokens: 6, temperature: 0, stream: true })) {
  events.push(event);
}
assert.equal(events[0].type, "response.created");
const deltas = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
assert.equal(deltas, response.output_text);

const tool = {
  type: "function", name: "get_weather", strict: true,
  parameters: { type: "object", properties: { city: { type: "string", maxLength: 12 } }, required: ["city"], additionalProperties: false },
};
const called = await client.responses.create({
  model: local, input: "Weather in Lima?", tools: [tool], tool_choice: { type: "function", name: "get_weather" },
  temperature: 1, max_output_tokens: 300,
});
const call = called.output.find((item) => item.type === "function_call");
assert.equal(call.name, "get_weather");
// maxLength counts characters (code points), as JSON Schema does; JS .length counts UTF-16 units.
const city = JSON.parse(call.arguments).city;
assert.ok([...city].length <= 12, `${JSON.stringify(city)}: ${[...city].length} characters`);

// Structured output: the Responses API's text.format and chat's
// response_format, each a JSON Schema the local answer is held to.
const trip = {
  type: "object",
  properties: { city: { type: "string", maxLength: 16 }, days: { type: "integer", minimum: 1, maximum: 9 }, train: { type: "boolean" } },
  required: ["city", "days", "train"], additionalProperties: false,
};
const planned = await client.responses.create({
  model: local, input: "Plan a trip.", text: { format: { type: "json_schema", name: "trip", schema: trip, strict: true } },
  reasoning: { effort: "minimal" }, temperature: 0, max_output_tokens: 80,
});
assert.equal(planned.status, "completed");
const plan = JSON.parse(planned.output_text);
assert.deepEqual(Object.keys(plan).sort(), ["city", "days", "train"]);
assert.ok(Number.isInteger(plan.days) && plan.days >= 1 && plan.days <= 9 && typeof plan.train === "boolean", planned.output_text);
const chatPlan = await client.chat.completions.create({
  model: local, messages: [{ role: "user", content: "Plan a trip." }], reasoning_effort: "minimal", temperature: 0, max_tokens: 80,
  response_format: { type: "json_schema", json_schema: { name: "trip", schema: trip, strict: true } },
});
assert.equal(chatPlan.choices[0].finish_reason, "stop");
assert.ok([...JSON.parse(chatPlan.choices[0].message.content).city].length <= 16);

const relayed = await client.responses.create({ model: remote, input: "hello there" });
assert.equal(relayed.output_text, "Echo: hello there");

const legacy = await client.completions.create({ model: remote, prompt: "hello there" });
assert.equal(legacy.choices[0].text, " Echo: hello there");

const embedded = await client.embeddings.create({ model: embed, input: ["a b", "c"] });
assert.equal(embedded.data.length, 2);
const norm = Math.hypot(...embedded.data[0].embedding);
assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);

const remoteEmbedded = await client.embeddings.create({ model: "text-embedding-3-small", input: ["abc", "de"] });
assert.deepEqual(remoteEmbedded.data.map((d) => Array.from(d.embedding)), [[3, 1, 0.5, -0.25], [2, 1, 0.5, -0.25]]);
assert.equal(remoteEmbedded.usage.prompt_tokens, 5);

const bytes = Buffer.from("line one\nline two\n".repeat(1000));
const file = await client.files.create({ file: await toFile(bytes, "data.jsonl"), purpose: "batch" });
assert.equal(file.bytes, bytes.length);
const content = Buffer.from(await (await client.files.content(file.id)).arrayBuffer());
assert.ok(content.equals(bytes));
const heard = await client.audio.transcriptions.create({ model: "whisper-1", file: await toFile(Buffer.alloc(3000), "a.wav") });
assert.equal(heard.text, "heard 3000 bytes of a.wav with whisper-1");

try {
  await client.chat.completions.create({ model: local, messages: [] });
  assert.fail("expected a 400");
} catch (err) {
  assert.ok(err instanceof OpenAI.BadRequestError, String(err));
}
console.log("ok");
