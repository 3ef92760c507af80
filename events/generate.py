#!/usr/bin/env python3
"""Writes the Lambda event fixtures in this folder and manifest.json.

API Gateway HTTP API (payload 2.0) events for the state API, Lambda function URL events for the
notify webhook. The Rust handler tests (tests/tests/suite/fixtures.rs) replay every fixture in manifest
order against one store and check the status; tools/sam-check.sh feeds the same files to
`sam local invoke`. Run `python3 events/generate.py` after changing it; commit the output.

The webhook fixtures carry real AgentKit deliveries (events/agentkit-webhook-vectors.json)
signed at their capture time: tests pin the clock to it; sam-check re-signs them at run time.
"""
import base64, hashlib, hmac, json, os, pathlib

HERE = pathlib.Path(__file__).resolve().parent
API_KEY = "fixture-api-key"          # the key the fixtures' callers present (tests configure it)
AGENT = "af8e59ab-6b62-47d1-b0af-fcb520de8640"   # vector-agent-1 from the AgentKit captures
VECTORS = {
    "secret": "opscore-test-secret-2026",
    "timestamp": "1795474230",
    "body": "{\"event_type\":\"REGISTER\",\"agent_details\":{\"agentId\":\"af8e59ab-6b62-47d1-b0af-fcb520de8640\",\"agentName\":\"vector-agent-1\",\"capabilities\":[\"summarize\",\"translate\"],\"version\":\"1.2.0\",\"contactEndpoint\":\"http://127.0.0.1:9400/task\",\"metadata\":{\"description\":\"Agent f\\u00fcr Tests \\u2713\",\"config\":{\"model\":\"x\",\"temperature\":0.2}},\"registration_time\":\"2026-11-23T22:50:30.280840Z\"}}",
    "signature": "08f3a03d3404596aa82a967f6db804768168a691159125ec3c840cfa5e3f2e4f",
}
TIME = "23/Nov/2026:22:50:30 +0000"
EPOCH_MS = 1795474230000
SAMPLE = json.loads((HERE.parent / "local" / "sample-workflow.json").read_text())


def http_api(name, method, path, query="", body=None, headers=None, auth=True, b64=False):
    """An HTTP API event as API Gateway sends it to the state API's one `$default` route: no route
    key and no path parameters, so the function's router routes `rawPath` (paths live only there)."""
    h = {"content-type": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com",
         "user-agent": "python-httpx/0.27.0", "x-forwarded-proto": "https"}
    if auth:
        h["authorization"] = f"Bearer {API_KEY}"
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    ev = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                               "sourceIp": "203.0.113.10", "userAgent": h.get("user-agent", "")},
            "requestId": f"fixture-{name}", "routeKey": "$default", "stage": "$default", "time": TIME,
            "timeEpoch": EPOCH_MS},
        "isBase64Encoded": b64,
    }
    if query:
        ev["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if body is not None:
        ev["body"] = base64.b64encode(body.encode()).decode() if b64 else body
    return ev


def function_url(name, body, timestamp, signature, b64=False, method="POST", path="/v1/opscore/internal/agent/notify"):
    h = {"content-type": "application/json", "host": "abcdefghij.lambda-url.us-east-1.on.aws",
         "user-agent": "python-requests/2.32.3", "x-forwarded-proto": "https",
         "x-agentkit-timestamp": timestamp, "x-agentkit-signature": signature}
    h = {k: v for k, v in h.items() if v is not None}
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": h,
        "requestContext": {
            "accountId": "anonymous", "apiId": "abcdefghij", "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghij", "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                                   "sourceIp": "203.0.113.20", "userAgent": h["user-agent"]},
            "requestId": f"fixture-{name}", "routeKey": "$default", "stage": "$default", "time": TIME, "timeEpoch": EPOCH_MS},
        "body": base64.b64encode(body.encode()).decode() if b64 else body,
        "isBase64Encoded": b64,
    }


def sign(body, ts, secret=VECTORS["secret"]):
    return hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()


def report(state, ts, details=None, agent=AGENT):
    return json.dumps({"agentId": agent, "timestamp": ts, "state": state, "details": details if details is not None else {}})


A = f"/v1/opscore/agent/{AGENT}"
dereg = json.dumps({"event_type": "DEREGISTER", "agent_details": {"agentId": "1362af57-cd2a-4acb-9cd3-341d7b8506ff"}}, separators=(",", ":"))

# (file, function, expected status, event). Order matters: later fixtures rely on earlier ones.
FIXTURES = [
    ("health.json", "StateApiFunction", 200, http_api("health", "GET", "/health", auth=False)),
    ("openapi.json", "StateApiFunction", 200, http_api("openapi", "GET", "/openapi.json", auth=False)),
    ("state-post-unknown-agent.json", "StateApiFunction", 404, http_api("unknown", "POST", f"{A}/state", body=report("idle", "2026-11-23T22:50:29.000000+00:00"))),
    ("notify-register.json", "NotifyWebhookFunction", 200, function_url("register", VECTORS["body"], VECTORS["timestamp"], VECTORS["signature"])),
    ("notify-register-base64.json", "NotifyWebhookFunction", 200, function_url("register-b64", VECTORS["body"], VECTORS["timestamp"], VECTORS["signature"], b64=True)),
    ("notify-bad-signature.json", "NotifyWebhookFunction", 401, function_url("bad-sig", VECTORS["body"], VECTORS["timestamp"], "0" * 64)),
    ("notify-unsigned.json", "NotifyWebhookFunction", 401, function_url("unsigned", VECTORS["body"], None, None)),
    ("notify-deregister-unknown.json", "NotifyWebhookFunction", 404, function_url("dereg", dereg, VECTORS["timestamp"], sign(dereg, VECTORS["timestamp"]))),
    ("state-post.json", "StateApiFunction", 202, http_api("state-post", "POST", f"{A}/state", body=report("idle", "2026-11-23T22:50:31.182002+00:00"))),
    ("state-post-base64.json", "StateApiFunction", 202, http_api("state-b64", "POST", f"{A}/state", body=report("IDLE", "2026-11-23T22:50:32.000000Z", {"note": "upper-case state, base64 body"}), b64=True)),
    ("state-post-stale.json", "StateApiFunction", 202, http_api("state-stale", "POST", f"{A}/state", body=report("active", "2026-11-23T22:40:00Z"))),
    ("state-get.json", "StateApiFunction", 200, http_api("state-get", "GET", f"{A}/state")),
    ("state-post-no-auth.json", "StateApiFunction", 401, http_api("no-auth", "POST", f"{A}/state", body="{not json", auth=False)),
    ("state-post-wrong-key.json", "StateApiFunction", 401, http_api("wrong-key", "POST", f"{A}/state", body=report("idle", "2026-11-23T22:50:33Z"), headers={"authorization": "Bearer wrong"})),
    ("state-post-bad-json.json", "StateApiFunction", 400, http_api("bad-json", "POST", f"{A}/state", body="{\"agentId\": ")),
    ("state-post-mismatch.json", "StateApiFunction", 400, http_api("mismatch", "POST", f"{A}/state", body=report("idle", "2026-11-23T22:50:33Z", agent="someone-else"))),
    ("state-post-bad-timestamp.json", "StateApiFunction", 400, http_api("bad-ts", "POST", f"{A}/state", body=report("idle", "2026-11-23 22:50:33"))),
    ("state-post-wrong-types.json", "StateApiFunction", 422, http_api("types", "POST", f"{A}/state", body=json.dumps({"agentId": AGENT, "timestamp": 5, "state": "", "details": []}))),
    ("state-post-too-large.json", "StateApiFunction", 413, http_api("large", "POST", f"{A}/state", body=report("idle", "2026-11-23T22:50:33Z", {"blob": "x" * 70000}))),
    ("agent-get.json", "StateApiFunction", 200, http_api("agent-get", "GET", A)),
    ("agents-list.json", "StateApiFunction", 200, http_api("agents", "GET", "/v1/opscore/agents", query="state=idle&limit=10")),
    ("history-get.json", "StateApiFunction", 200, http_api("history", "GET", f"{A}/state/history", query="limit=2")),
    ("workflow-create.json", "StateApiFunction", 201, http_api("wf-create", "POST", "/v1/opscore/workflows", body=json.dumps(SAMPLE))),
    ("workflow-create-yaml.json", "StateApiFunction", 201, http_api("wf-yaml", "POST", "/v1/opscore/workflows", headers={"content-type": "application/yaml"},
        body="id: yaml_workflow\nname: From YAML\nversion: '1.0'\nretryPolicy: {maxRetries: 2, baseDelaySeconds: 1, maxDelaySeconds: 10}\ntasks:\n  - taskId: only\n    name: Only Step\n    parameters: {message: hi}\n")),
    ("workflow-create-invalid.json", "StateApiFunction", 422, http_api("wf-invalid", "POST", "/v1/opscore/workflows",
        body=json.dumps({"id": "bad", "name": "Bad", "tasks": [{"taskId": "a", "name": "A", "nextTaskId": "b"}, {"taskId": "a", "name": "A2", "nextTaskId": "missing"}]}))),
    ("workflow-create-conflict.json", "StateApiFunction", 409, http_api("wf-conflict", "POST", "/v1/opscore/workflows", body=json.dumps({**SAMPLE, "name": "Changed without a new version"}))),
    ("workflows-list.json", "StateApiFunction", 200, http_api("wf-list", "GET", "/v1/opscore/workflows")),
    ("workflow-get.json", "StateApiFunction", 200, http_api("wf-get", "GET", "/v1/opscore/workflows/sample_workflow_id")),
    ("trigger.json", "StateApiFunction", 202, http_api("trigger", "POST", f"{A}/workflow",
        headers={"idempotency-key": "fixture-trigger-1"}, body=json.dumps({"workflowDefinitionId": "sample_workflow_id", "initialPayload": {"message": "hello"}}))),
    ("trigger-both.json", "StateApiFunction", 422, http_api("trigger-both", "POST", f"{A}/workflow",
        body=json.dumps({"workflowDefinitionId": "sample_workflow_id", "workflowDefinition": SAMPLE}))),
    ("trigger-unknown-workflow.json", "StateApiFunction", 404, http_api("trigger-unknown", "POST", f"{A}/workflow",
        body=json.dumps({"workflowDefinitionId": "no_such_workflow"}))),
    ("sessions-list.json", "StateApiFunction", 200, http_api("sessions", "GET", f"{A}/sessions")),
    ("session-get-unknown.json", "StateApiFunction", 404, http_api("session-unknown", "GET", "/v1/opscore/sessions/00000000-0000-4000-8000-000000000000")),
    ("session-cancel-bad-id.json", "StateApiFunction", 400, http_api("cancel-bad", "POST", "/v1/opscore/sessions/not-a-uuid/cancel")),
    ("route-unknown.json", "StateApiFunction", 404, http_api("no-route", "GET", "/v1/opscore/nothing")),
    ("method-not-allowed.json", "StateApiFunction", 405, http_api("method", "DELETE", f"{A}/state")),
]


def sqs_message(n, body):
    """One record of an SQS batch as the event source mapping delivers it to the runner."""
    return {
        "messageId": f"0000000{n}-aaaa-4bbb-8ccc-00000000000{n}",
        "receiptHandle": f"fixture-receipt-handle-{n}",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(EPOCH_MS),
                       "SenderId": "AROAEXAMPLE:ops-core-workflow-runner",
                       "ApproximateFirstReceiveTimestamp": str(EPOCH_MS + 3000)},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ops-core-TimerQueue-EXAMPLE",
        "awsRegion": "us-east-1",
    }


def wake_up(session, task="step_1", attempt=1, at="2026-11-23T22:50:33.280840Z"):
    return json.dumps({"sessionId": session, "taskId": task, "attempt": attempt, "timerAt": at},
                      separators=(",", ":"))


# The runner's timer queue (SQS wake-ups, shared/lambda/src/timers.rs). Not in the manifest (that
# lists the HTTP fixtures): tests/tests/suite/timers_sqs.rs replays these, and
# events/sam-invocations.txt names them with the batchItemFailures they must answer.
RUNNER_FIXTURES = [
    # Wake-ups for tasks that do not exist (any more): nothing to do, nothing to retry.
    ("runner-wakeups.json", {"Records": [
        sqs_message(1, wake_up("00000000-0000-4000-8000-000000000001")),
        sqs_message(2, wake_up("00000000-0000-4000-8000-000000000002", attempt=2)),
    ]}),
    # A partial batch failure: the second body is not a wake-up, so it alone is reported (SQS
    # redelivers it, then moves it to the dead-letter queue); the others are done.
    ("runner-wakeups-partial.json", {"Records": [
        sqs_message(1, wake_up("00000000-0000-4000-8000-000000000001")),
        sqs_message(2, json.dumps({"sessionId": "not-a-session", "taskId": "step_1"})),
        sqs_message(3, wake_up("00000000-0000-4000-8000-000000000003")),
    ]}),
]


def main():
    for name, ev in RUNNER_FIXTURES:
        (HERE / name).write_text(json.dumps(ev, indent=2) + "\n")
    manifest = []
    for name, function, status, ev in FIXTURES:
        (HERE / name).write_text(json.dumps(ev, indent=2, ensure_ascii=False) + "\n")
        manifest.append({"fixture": name, "function": function, "status": status})
    (HERE / "manifest.json").write_text(json.dumps({
        "apiKey": API_KEY, "webhookSecret": VECTORS["secret"], "signedAt": int(VECTORS["timestamp"]),
        "invocations": manifest}, indent=2) + "\n")
    print(f"wrote {len(FIXTURES)} fixtures and manifest.json, and {len(RUNNER_FIXTURES)} runner fixtures")


if __name__ == "__main__":
    main()
