"""The parts of `FakeOpenAIServer` (`..fake_server` and `..fake_batches` are the public modules).

- `settings`: the rarer constructor settings (`LimitSettings`, `ServerSettings`);
- `buckets`: the request and token buckets of a limit group, and which key counts against which;
- `counters`: what the server saw per key (`KeyCounters`), the request log, requests in flight;
- `faults`: the faults injected per key;
- `errors`: OpenAI's error bodies and the prompt markers;
- `plans`: a validated request and its answer (`Planner`), per endpoint;
- `replies`: the ASGI messages of a reply (JSON, stream, fault, 429);
- `app`: the ASGI application that puts these together per request;
- `server`: `FakeOpenAIServer`, the app served by uvicorn from a background thread;
- `cli`: the command line;
- `batch_files`, `batch_state`: the files and the batches of the Batch API (`..fake_batches`).
"""
