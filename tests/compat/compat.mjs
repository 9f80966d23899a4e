// SPDX-License-Identifier: Apache-2.0
//
// llmgate against the official OpenAI client library for Node.js (the
// `openai` package pinned in package.json): every call goes through the
// client exactly as an application would make it, and every answer is
// checked the way the client hands it over.
//
//   node compat.mjs
//
// Settings come from the environment:
//   LLMGATE_URL          the gateway, e.g. http://127.0.0.1:8080 (the client's
//                        baseURL is this + "/v1")
//   LLMGATE_KEY          a key the gateway accepts (the master key)
//   COMPAT_CHAT_MODEL    a chat model whose name contains '/'
//   COMPAT_CHAT_ALIAS    an alias of that model
//   COMPAT_EMBED_MODELS  embeddings models, comma-separated, checked with
//                        encoding_format "float" and with the client's
//                        default (base64, decoded by the client)
//   COMPAT_EMBED_FLOAT_MODELS  embeddings models (optional, comma-separated)
//                        whose upstream only answers floats: checked with
//                        encoding_format "float" only
//   COMPAT_EMBED_DIM     the length of their vectors
//
// The chat model must answer like llmgate's mock upstream ("Mock reply to:
// <the last user message>", one token per word). Prints one line per check
// and exits 1 at the first mismatch, naming what was expected and what came.
import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const PROMPT = 'Say hello to the compatibility test';
const REPLY = 'Mock reply to: ' + PROMPT;

class Mismatch extends Error {}

function setting(name) {
	const value = process.env[name];
	if (!value) {
		throw new Mismatch(`${name} is not set`);
	}
	return value;
}

function show(value) {
	const text = JSON.stringify(value);
	return text === undefined ? String(value) : text.slice(0, 400);
}

function expect(cond, what, got) {
	if (!cond) {
		throw new Mismatch(arguments.length > 2 ? `${what}; got ${show(got)}` : what);
	}
}

function expectEqual(got, want, what) {
	expect(got === want, `${what}: expected ${show(want)}`, got);
}

// The error the client raises for @call, checked to be of @cls with @status
// and to carry the gateway's own @message.
async function expectError(call, cls, status, message, what) {
	let err = null;
	try {
		await call();
	} catch (e) {
		err = e;
	}
	expect(err !== null, `${what}: the call succeeded, expected ${cls.name}`);
	expect(err instanceof cls, `${what}: expected ${cls.name}`,
	       `${err?.constructor?.name}: ${err?.message}`);
	expectEqual(err.status, status, `${what}: status`);
	expect(typeof err.message === 'string' && err.message.includes(message),
	       `${what}: the client's message should show the gateway's "${message}"`,
	       err.message);
	expectEqual(err.error?.message, message, `${what}: error.message of the body`);
	expect(typeof err.requestID === 'string' && err.requestID.length > 0,
	       `${what}: x-request-id should reach the client as requestID`, err.requestID);
}

async function checkModels(client, cfg) {
	const ids = [];
	for await (const model of client.models.list()) {
		expectEqual(model.object, 'model', 'models.list(): object of each model');
		ids.push(model.id);
	}
	for (const name of [cfg.chat, ...cfg.embed, ...cfg.embedFloat]) {
		expect(ids.includes(name), `models.list() should list "${name}"`, ids);
	}

	const model = await client.models.retrieve(cfg.chat);
	expectEqual(model.id, cfg.chat, `models.retrieve("${cfg.chat}"): id`);
	expectEqual(model.object, 'model', `models.retrieve("${cfg.chat}"): object`);

	await expectError(() => client.models.retrieve('no-such/model'), OpenAI.NotFoundError,
			  404, 'Model no-such/model not found.',
			  'models.retrieve() of an unknown model');
}

async function checkChat(client, cfg) {
	const messages = [
		{ role: 'system', content: 'You are terse.' },
		{ role: 'user', content: PROMPT },
	];
	const { data: reply, request_id: rid } = await client.chat.completions
		.create({ model: cfg.alias, messages, max_tokens: 64 }).withResponse();
	expect(typeof rid === 'string' && rid.length > 0,
	       'chat: x-request-id should reach the client as request_id', rid);
	expectEqual(reply.object, 'chat.completion', 'chat: object');
	expect(typeof reply.id === 'string' && reply.id.length > 0, 'chat: id', reply.id);
	expectEqual(reply.choices.length, 1, 'chat: number of choices');
	expectEqual(reply.choices[0].message.role, 'assistant', 'chat: role');
	expectEqual(reply.choices[0].message.content, REPLY, 'chat: content');
	expectEqual(reply.choices[0].finish_reason, 'stop', 'chat: finish_reason');
	const usage = reply.usage;
	expect(usage && usage.prompt_tokens > 0 && usage.completion_tokens > 0,
	       'chat: usage with prompt and completion tokens', usage);
	expectEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens,
		    'chat: usage.total_tokens');
	return usage;
}

// Iterates a stream as an application does; returns what it relayed.
async function readStream(stream, what) {
	let content = '';
	let finish = null;
	let usage = null;
	let chunks = 0;
	let afterUsage = 0;
	let role = null;
	for await (const chunk of stream) {
		chunks++;
		expectEqual(chunk.object, 'chat.completion.chunk', `${what}: object of chunk ${chunks}`);
		if (usage) {
			afterUsage++;
		}
		for (const choice of chunk.choices) {
			role = choice.delta?.role ?? role;
			content += choice.delta?.content ?? '';
			finish = choice.finish_reason ?? finish;
		}
		if (chunk.usage) {
			expectEqual(chunk.choices.length, 0, `${what}: choices of the usage chunk`);
			usage = chunk.usage;
		}
	}
	return { content, finish, usage, chunks, afterUsage, role };
}

async function checkStream(client, cfg, plainUsage) {
	const messages = [{ role: 'user', content: PROMPT }];
	const stream = await client.chat.completions.create({
		model: cfg.chat, messages, stream: true, stream_options: { include_usage: true },
	});
	const got = await readStream(stream, 'stream');
	expect(got.chunks >= 3, 'stream: several chunks', got.chunks);
	expectEqual(got.role, 'assistant', 'stream: role');
	expectEqual(got.content, REPLY, 'stream: content put together from the chunks');
	expectEqual(got.finish, 'stop', 'stream: finish_reason');
	expect(got.usage !== null, 'stream: a final usage chunk with include_usage');
	expectEqual(got.afterUsage, 0, 'stream: chunks after the usage chunk');
	expectEqual(got.usage.completion_tokens, plainUsage.completion_tokens,
		    'stream: usage.completion_tokens (as without stream)');
	expectEqual(got.usage.total_tokens,
		    got.usage.prompt_tokens + got.usage.completion_tokens,
		    'stream: usage.total_tokens');

	// Without stream_options the same content arrives.
	const bare = await readStream(await client.chat.completions.create({
		model: cfg.alias, messages, stream: true,
	}), 'stream without stream_options');
	expectEqual(bare.content, REPLY, 'stream without stream_options: content');
	expectEqual(bare.finish, 'stop', 'stream without stream_options: finish_reason');

	// The client's stream runner, which assembles a whole completion.
	const runner = client.chat.completions.stream({ model: cfg.chat, messages });
	let deltas = '';
	runner.on('content', (delta) => { deltas += delta; });
	const final = await runner.finalChatCompletion();
	expectEqual(final.choices[0].message.content, REPLY, 'chat.completions.stream(): content');
	expectEqual(deltas, REPLY, 'chat.completions.stream(): content events');
}

function norm(v) {
	return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

async function checkEmbeddings(client, model, dim, base64) {
	const input = ['the first text', 'a second, different text'];
	const what = `embeddings (${model})`;
	const asFloat = await client.embeddings.create({ model, input, encoding_format: 'float' });
	expectEqual(asFloat.object, 'list', `${what}: object`);
	expectEqual(asFloat.data.length, 2, `${what}: number of vectors`);
	asFloat.data.forEach((d, i) => {
		expectEqual(d.object, 'embedding', `${what}: object of vector ${i}`);
		expectEqual(d.index, i, `${what}: index of vector ${i}`);
		expect(Array.isArray(d.embedding) && d.embedding.every(Number.isFinite),
		       `${what}: vector ${i} should be an array of numbers`, d.embedding);
		expectEqual(d.embedding.length, dim, `${what}: length of vector ${i}`);
		expect(Math.abs(norm(d.embedding) - 1) < 1e-3,
		       `${what}: vector ${i} should have length 1`, norm(d.embedding));
	});
	expect(asFloat.usage && asFloat.usage.prompt_tokens > 0,
	       `${what}: usage.prompt_tokens`, asFloat.usage);

	if (!base64) {
		return;
	}
	// Without encoding_format the client asks for base64 and decodes it:
	// the same vectors must come out (float32 precision).
	const asDefault = await client.embeddings.create({ model, input });
	expectEqual(asDefault.data.length, 2, `${what}, default encoding: number of vectors`);
	asDefault.data.forEach((d, i) => {
		const want = asFloat.data[i].embedding;
		expectEqual(d.embedding.length, want.length,
			    `${what}, default encoding (base64): length of vector ${i}`);
		const far = d.embedding.findIndex((x, k) => !(Math.abs(x - want[k]) < 1e-5));
		expect(far < 0, `${what}, default encoding (base64): vector ${i} should equal ` +
		       `the float one (${want.slice(0, 3)}...)`, d.embedding.slice(0, 3));
	});
}

async function checkErrors(client, cfg) {
	await expectError(() => client.chat.completions.create({
		model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }],
	}), OpenAI.NotFoundError, 404, 'Model no-such-model not found.',
	'chat with an unknown model');

	const stranger = new OpenAI({ baseURL: cfg.baseURL, apiKey: 'sk-not-a-valid-key',
				      maxRetries: 0 });
	await expectError(() => stranger.models.list(), OpenAI.AuthenticationError, 401,
			  'Invalid API key.', 'models.list() with a bad key');
	await expectError(() => stranger.chat.completions.create({
		model: cfg.chat, messages: [{ role: 'user', content: 'hi' }],
	}), OpenAI.AuthenticationError, 401, 'Invalid API key.', 'chat with a bad key');
}

async function main() {
	const cfg = {
		baseURL: setting('LLMGATE_URL').replace(/\/+$/, '') + '/v1',
		key: setting('LLMGATE_KEY'),
		chat: setting('COMPAT_CHAT_MODEL'),
		alias: setting('COMPAT_CHAT_ALIAS'),
		embed: setting('COMPAT_EMBED_MODELS').split(',').filter(Boolean),
		embedFloat: (process.env.COMPAT_EMBED_FLOAT_MODELS ?? '').split(',').filter(Boolean),
		dim: Number.parseInt(setting('COMPAT_EMBED_DIM'), 10),
	};
	expect(cfg.chat.includes('/'), 'COMPAT_CHAT_MODEL should contain "/"', cfg.chat);
	// No retries: a failure must show as it happened.
	const client = new OpenAI({ baseURL: cfg.baseURL, apiKey: cfg.key, maxRetries: 0,
				    timeout: 30000 });

	const steps = [
		['models', () => checkModels(client, cfg)],
		['chat and streams', async () => checkStream(client, cfg, await checkChat(client, cfg))],
		...cfg.embed.map((m) => [`embeddings ${m}`,
					 () => checkEmbeddings(client, m, cfg.dim, true)]),
		...cfg.embedFloat.map((m) => [`embeddings ${m} (float)`,
					      () => checkEmbeddings(client, m, cfg.dim, false)]),
		['errors', () => checkErrors(client, cfg)],
	];
	for (const [name, run] of steps) {
		await run();
		console.log(`ok - ${name}`);
	}
	console.log(`openai ${VERSION}: all checks passed`);
}

main().catch((err) => {
	if (err instanceof Mismatch) {
		console.error(`MISMATCH: ${err.message}`);
	} else {
		console.error(`ERROR: ${err?.stack ?? err}`);
	}
	process.exit(1);
});
