#!/usr/bin/env python3
"""Mem0's own Python client (mem0ai, from PyPI) against a live Engram.

Usage: client_test.py ENGRAM_BIN MODEL_DIR

Runs under whichever mem0ai the interpreter has (make test runs it with 2.x and
with 1.x). Starts `engram serve` on a free port with a fresh data directory,
creates API keys with `engram keys create`, then drives `MemoryClient(api_key=…,
host=…)` through every call a Mem0 user makes, asserting content, and the
routes of Mem0's self-hosted server with plain HTTP; batch updates and deletes,
feedback, the v3 search options and webhooks (a receiver on loopback checks
Mem0's payload and the signature).
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

os.environ["MEM0_TELEMETRY"] = "false"  # read at import; no network here

BIN, MODEL = sys.argv[1], sys.argv[2]

import mem0  # noqa: E402
from mem0 import MemoryClient  # noqa: E402
from mem0.exceptions import AuthenticationError, MemoryNotFoundError, ValidationError  # noqa: E402

try:
    from importlib.metadata import version

    MEM0_VERSION = version("mem0ai")
except Exception:  # pragma: no cover
    MEM0_VERSION = getattr(mem0, "__version__", "?")
V2 = int(MEM0_VERSION.split(".")[0]) >= 2
CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        raise SystemExit(f"mem0ai {MEM0_VERSION}: FAILED: {what}")
    CHECKS += 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(data, env, *args):
    out = subprocess.run([BIN, "keys", "create", "--data-dir", data, *args], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def results(r):
    """Search / get_all answers: {"results": [...]} (1.x wraps bare lists the same way)."""
    return r["results"] if isinstance(r, dict) else r


def texts(r):
    return sorted(m["memory"] for m in results(r))


def raises(exc, fn, what):
    try:
        fn()
    except exc as e:
        check(True, what)
        return e
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"mem0ai {MEM0_VERSION}: FAILED: {what}: raised {type(e).__name__}: {e}")
    raise SystemExit(f"mem0ai {MEM0_VERSION}: FAILED: {what}: nothing raised")


def search(client, query, filters, **kw):
    if V2:
        return client.search(query, filters=filters, **kw)
    return client.search(query, filters=filters, version="v2", **kw)


def get_all(client, filters, **kw):
    if V2:
        return client.get_all(filters=filters, **kw)
    return client.get_all(filters=filters, version="v2", **kw)


def exercise_client(url, admin, alice_key):
    client = MemoryClient(api_key=admin, host=url)
    check(client.api_key == admin, "constructor pinged the server")

    # add, infer=False and infer=True (no LLM configured: both store the messages verbatim)
    r = client.add([{"role": "user", "content": "I moved to Lisbon and I am vegetarian now."}],
                   user_id="alice", infer=False, metadata={"source": "chat"})
    added = results(r)
    check(added and added[0]["event"] == "ADD", f"add infer=False: {r}")
    lisbon_id = added[0]["id"]
    r = client.add("I play the cello on weekends.", user_id="alice", infer=True)
    check(results(r)[0]["event"] == "ADD", f"add infer=True: {r}")
    cello_id = results(r)[0]["id"]
    client.add([{"role": "user", "content": "Bob lives in Berlin and loves steak."}], user_id="bob")
    client.add([{"role": "user", "content": "The planner agent prefers short answers."}], agent_id="planner")
    r = client.add("I moved to Lisbon and I am vegetarian now.", user_id="alice")
    check(results(r)[0]["event"] == "NOOP", "a duplicate is NOOP")

    # search with AND / OR filters and top_k
    r = search(client, "where does she live?", {"AND": [{"user_id": "alice"}]}, top_k=1)
    check(len(results(r)) == 1 and results(r)[0]["memory"].startswith("I moved to Lisbon"),
          f"search AND filter + top_k=1: {r}")
    hit = results(r)[0]
    check(hit["user_id"] == "alice" and 0 <= hit["score"] <= 1 and hit["id"] == lisbon_id
          and hit["metadata"] == {"source": "chat"} and len(hit["hash"]) == 32 and hit["created_at"],
          f"search hit fields: {hit}")
    r = search(client, "where do they live?", {"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}, top_k=10)
    users = {m["user_id"] for m in results(r)}
    check(users == {"alice", "bob"}, f"search OR filter spans both users: {users}")
    r = search(client, "food", {"user_id": "bob"})
    check(all(m["user_id"] == "bob" for m in results(r)) and results(r), "search by bob sees only bob")

    # get_all with pagination
    for i in range(5):
        client.add(f"Alice note {i}: topic {['tea', 'chess', 'sailing', 'jazz', 'ramen'][i]}.", user_id="alice")
    page1 = get_all(client, {"user_id": "alice"}, page=1, page_size=3)
    check(page1["count"] == 7 and len(page1["results"]) == 3 and page1["next"] and page1["previous"] is None,
          f"get_all page 1: count {page1.get('count')}, next {page1.get('next')}")
    page3 = get_all(client, {"user_id": "alice"}, page=3, page_size=3)
    check(len(page3["results"]) == 1 and page3["next"] is None and page3["previous"],
          f"get_all page 3: {page3}")
    all_ids = {m["id"] for p in (1, 2, 3) for m in get_all(client, {"user_id": "alice"}, page=p, page_size=3)["results"]}
    check(len(all_ids) == 7 and lisbon_id in all_ids, "pages cover every memory once")
    r = get_all(client, {"AND": [{"user_id": "alice"}, {"created_at": {"gte": "2000-01-01"}}]}, page=1, page_size=50)
    check(len(results(r)) == 7, "get_all with a date filter")
    export = get_all(client, {"user_id": "alice"}, page=1, page_size=50)  # what a Mem0 user exports

    # get, update, history
    m = client.get(lisbon_id)
    check(m["memory"] == "I moved to Lisbon and I am vegetarian now." and m["user_id"] == "alice", f"get: {m}")
    client.update(lisbon_id, text="I moved to Porto and I am vegan now.")
    check(client.get(lisbon_id)["memory"] == "I moved to Porto and I am vegan now.", "update changed the text")
    if V2:
        client.update(lisbon_id, metadata={"source": "fix"})
        check(client.get(lisbon_id)["metadata"] == {"source": "fix"}, "update metadata")
    h = client.history(lisbon_id)
    check(isinstance(h, list) and [e["event"] for e in h][:2] == ["ADD", "UPDATE"], f"history: {h}")
    check(h[1]["old_memory"].startswith("I moved to Lisbon") and h[1]["new_memory"].startswith("I moved to Porto"),
          "history keeps old and new text")

    # delete
    client.delete(cello_id)
    raises(MemoryNotFoundError, lambda: client.get(cello_id), "a deleted memory is not found")
    raises(MemoryNotFoundError, lambda: client.get("00000000-0000-0000-0000-000000000000"), "missing id → not found")
    raises(MemoryNotFoundError, lambda: client.history("00000000-0000-0000-0000-000000000000"),
           "history of a missing id → not found")

    # users (entities)
    u = client.users()
    names = {(e["type"], e["name"]) for e in u["results"]}
    check({("user", "alice"), ("user", "bob"), ("agent", "planner")} <= names, f"users: {names}")
    check(u["total_users"] == 2 and u["total_agents"] == 1, f"users totals: {u}")

    # delete_all by user, then with a filters dict (sent as a Python repr in the query string)
    client.delete_all(user_id="bob")
    check(results(search(client, "Berlin", {"user_id": "bob"})) == [], "delete_all(user_id) removed bob's memories")
    client.add("Carol keeps bees.", user_id="carol")
    client.add("Dan keeps bees too.", user_id="dan")
    client.delete_all(filters={"OR": [{"user_id": "carol"}, {"user_id": "dan"}]})
    check(results(search(client, "bees", {"OR": [{"user_id": "carol"}, {"user_id": "dan"}]})) == [],
          "delete_all with filters removed carol's and dan's")

    # delete_users for one user, then reset (deletes every user, agent, app and run)
    client.delete_users(user_id="alice")
    check(results(get_all(client, {"user_id": "alice"}, page=1, page_size=50)) == [], "delete_users(user_id)")
    client.add("Eve likes hiking.", user_id="eve")
    client.reset()
    check(client.users()["results"] == [], "reset deleted everything")

    # `engram import --from mem0` reads Mem0's get_all output back in (through the server).
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(export, f)
    out = subprocess.run([BIN, "import", "--from", "mem0", f.name, "--url", url, "--api-key", admin],
                         capture_output=True, text=True, env={**os.environ, "ENGRAM_LOG": "warn"})
    os.unlink(f.name)
    check(out.returncode == 0 and "7 memories added" in out.stdout, f"import --from mem0: {out.stdout} {out.stderr}")
    back = get_all(client, {"user_id": "alice"}, page=1, page_size=50)
    check(sorted(m["memory"] for m in back["results"]) == sorted(m["memory"] for m in export["results"]),
          "the imported memories are the exported ones")
    check({m["created_at"][:19] for m in back["results"]} == {m["created_at"][:19] for m in export["results"]},
          "import keeps created_at")
    client.reset()

    # A key bound to one user cannot see or reach others.
    client.add("Frank's secret is saffron.", user_id="frank")
    frank_id = results(search(client, "saffron", {"user_id": "frank"}))[0]["id"]
    alice = MemoryClient(api_key=alice_key, host=url)
    r = alice.add("Alice's own note.", user_id="alice")
    check(results(r)[0]["event"] == "ADD", "alice's key adds for alice")
    raises(AuthenticationError, lambda: search(alice, "saffron", {"user_id": "frank"}),
           "alice's key naming frank → 403 → AuthenticationError")
    raises(MemoryNotFoundError, lambda: alice.get(frank_id), "alice's key cannot get frank's memory")
    check(results(search(alice, "secret", {"user_id": "alice"})) != [] and
          all(m["user_id"] == "alice" for m in results(search(alice, "secret", {"user_id": "alice"}))),
          "alice's key sees only alice")

    # Bad input and bad keys map to the client's exceptions.
    if V2:
        raises(ValidationError, lambda: client.search("x", filters={"user_id": {"like": "a"}}),
               "an invalid filter → 400 → ValidationError")
    else:
        raises(ValidationError, lambda: client.search("x", filters={"user_id": {"like": "a"}}, version="v2"),
               "an invalid filter → 400 → ValidationError")
    raises(ValueError, lambda: MemoryClient(api_key="engram_0123456789abcdef_" + "0" * 64, host=url),
           "a bad key fails the constructor's ping")
    client.client.headers["Authorization"] = "Token engram_0123456789abcdef_" + "0" * 64
    raises(AuthenticationError, lambda: client.get(frank_id), "a bad key → 401 → AuthenticationError")


class Receiver:
    """A webhook receiver on loopback: records each request's headers and body."""

    def __init__(self):
        import http.server
        import threading

        got = self.got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n):
        for _ in range(200):
            if len(self.got) >= n:
                return self.got
            time.sleep(0.05)
        raise SystemExit(f"mem0ai {MEM0_VERSION}: FAILED: {n} webhook deliveries expected, got {len(self.got)}")


def verified(secret, headers, body):
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">."""
    import base64
    import hashlib
    import hmac

    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return expected in headers["webhook-signature"].split()


def feedback(client, memory_id, **kw):
    """client.feedback; 1.0.11's raises TypeError after the server answered (its own
    telemetry call has the wrong arity), so there the answer is read back with get()."""
    try:
        return client.feedback(memory_id, **kw)
    except TypeError as e:
        check(not V2 and "capture_client_event" in str(e), f"feedback raised {e}")
        return {"feedback": client.get(memory_id).get("feedback")}


def exercise_batch_feedback_webhooks(url, admin, alice_key):
    """batch_update, batch_delete, feedback, webhooks and the v3 search options."""
    client = MemoryClient(api_key=admin, host=url)
    ids = [results(client.add(t, user_id="hana", infer=False))[0]["id"]
           for t in ("Hana grows tomatoes.", "Hana rows on the river.", "Hana collects stamps.")]

    # batch_update / batch_delete: all or nothing, the error names the memory.
    r = client.batch_update([{"memory_id": ids[0], "text": "Hana grows peppers."},
                             {"memory_id": ids[1], "text": "Hana rows on the lake."}])
    check(r["message"] == "Successfully updated 2 memories", f"batch_update: {r}")
    check(client.get(ids[0])["memory"] == "Hana grows peppers.", "batch_update wrote")
    missing = "00000000-0000-7000-8000-000000000000"
    e = raises(MemoryNotFoundError, lambda: client.batch_update([{"memory_id": ids[2], "text": "Must not land."},
                                                                  {"memory_id": missing, "text": "x"}]),
               "batch_update with an unknown id → 404")
    check(missing in str(e), f"the error names the memory: {e}")
    check(client.get(ids[2])["memory"] == "Hana collects stamps.", "nothing of the failed batch landed")
    alice = MemoryClient(api_key=alice_key, host=url)
    raises(MemoryNotFoundError, lambda: alice.batch_delete([{"memory_id": ids[2]}]),
           "a key bound to alice cannot batch-delete hana's memory")
    r = client.batch_delete([{"memory_id": ids[0]}, {"memory_id": ids[1]}])
    check(r["message"] == "Successfully deleted 2 memories", f"batch_delete: {r}")
    raises(MemoryNotFoundError, lambda: client.get(ids[0]), "a batch-deleted memory is gone")

    # feedback: kept, and used by search (VERY_NEGATIVE leaves results).
    stamps = ids[2]
    r = feedback(client, stamps, feedback="NEGATIVE", feedback_reason="not a hobby any more")
    check(r["feedback"] == "NEGATIVE", f"feedback: {r}")
    check(client.get(stamps).get("feedback") == "NEGATIVE", "get shows the feedback")
    check(client.history(stamps)[-1]["event"] == "FEEDBACK", "the history records it")
    feedback(client, stamps, feedback="VERY_NEGATIVE")
    check(results(search(client, "stamps", {"user_id": "hana"})) == [], "VERY_NEGATIVE leaves search results")
    feedback(client, stamps, feedback=None)
    check([m["id"] for m in results(search(client, "stamps", {"user_id": "hana"}))] == [stamps],
          "cleared feedback brings it back")

    if V2:
        # v3 search options: accepted, or refused when Engram cannot honour them.
        r = client.search("stamps", filters={"user_id": "hana"}, rerank=True, keyword_search=True,
                          latest_only=True, reference_date="2026-01-01")
        check([m["id"] for m in results(r)] == [stamps], f"v3 search options: {r}")
        raises(ValidationError, lambda: client.search("stamps", filters={"user_id": "hana"}, latest_only=False),
               "latest_only=False is refused, not ignored")
        other = results(client.add("Hana bakes bread.", user_id="hana", infer=False))[0]["id"]
        client.delete(other, delete_linked=True)
        raises(MemoryNotFoundError, lambda: client.get(other), "delete(delete_linked=True)")

    # webhooks: Mem0's methods and payload, signed.
    recv = Receiver()
    try:
        hook = client.create_webhook(url=recv.url, name="py", project_id="default",
                                     event_types=["memory_add", "memory_update"])
        check(hook["secret"].startswith("whsec_") and hook["event_types"] == ["memory_add", "memory_update"],
              f"create_webhook: {hook}")
        hooks = client.get_webhooks(project_id="default")
        check([h["webhook_id"] for h in hooks] == [hook["webhook_id"]] and "secret" not in hooks[0],
              f"get_webhooks: {hooks}")
        added = results(client.add("Hana learns Welsh.", user_id="hana", infer=False))[0]["id"]
        headers, body = recv.wait(1)[0]
        payload = json.loads(body)
        check(payload == {"event_details": {"id": added, "data": {"memory": "Hana learns Welsh."}, "event": "ADD"}},
              f"Mem0's payload: {payload}")
        check(verified(hook["secret"], headers, body), "the delivery's signature verifies")
        r = client.update_webhook(webhook_id=hook["webhook_id"], name="renamed", event_types=["memory_delete"])
        check(r["message"] == "Webhook updated successfully" and r["event_types"] == ["memory_delete"],
              f"update_webhook: {r}")
        client.delete(added)
        headers, body = recv.wait(2)[1]
        check(json.loads(body)["event_details"]["event"] == "DELETE", f"memory_delete delivered: {body}")
        r = client.delete_webhook(webhook_id=hook["webhook_id"])
        check(r["message"] == "Webhook deleted successfully", f"delete_webhook: {r}")
        check(client.get_webhooks(project_id="default") == [], "the webhook is gone")
        raises(ValidationError, lambda: client.create_webhook(url="http://127.0.0.1/x", name="bad",
                                                              project_id="default", event_types=["memory_explode"]),
               "an unknown event type → 400")
    finally:
        recv.server.shutdown()


def http(method, url, key=None, body=None, header="X-API-Key"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key and header == "X-API-Key":
        req.add_header("X-API-Key", key)
    elif key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def exercise_server_routes(url, admin):
    """The routes of Mem0's self-hosted server (`server/main.py`)."""
    s, r = http("POST", f"{url}/memories", admin, {"messages": [{"role": "user", "content": "Gina drinks oolong tea."}],
                                                   "user_id": "gina", "metadata": {"k": "v"}})
    check(s == 200 and r["results"][0]["event"] == "ADD", f"POST /memories: {s} {r}")
    gid = r["results"][0]["id"]
    s, r = http("POST", f"{url}/memories", admin, {"messages": [{"role": "user", "content": "no ids"}]})
    check(s == 400 and "identifier" in r["detail"], f"POST /memories without ids → 400: {s} {r}")
    s, r = http("GET", f"{url}/memories?user_id=gina", admin)
    check(s == 200 and [m["id"] for m in r["results"]] == [gid], f"GET /memories: {r}")
    s, r = http("GET", f"{url}/memories/{gid}", admin, header="Bearer")
    check(s == 200 and r["memory"] == "Gina drinks oolong tea." and r["metadata"] == {"k": "v"}, f"GET /memories/id {r}")
    s, r = http("POST", f"{url}/search", admin, {"query": "what tea?", "user_id": "gina", "top_k": 3})
    check(s == 200 and r["results"][0]["id"] == gid and "score" in r["results"][0], f"POST /search: {r}")
    s, r = http("POST", f"{url}/search", admin, {"query": "tea", "filters": {"OR": [{"user_id": "gina"}, {"user_id": "x"}]}})
    check(s == 200 and len(r["results"]) == 1, f"POST /search with filters: {r}")
    s, r = http("PUT", f"{url}/memories/{gid}", admin, {"text": "Gina drinks green tea."})
    check(s == 200 and r == {"message": "Memory updated successfully!"}, f"PUT /memories/id: {r}")
    s, r = http("GET", f"{url}/memories/{gid}/history", admin)
    check(s == 200 and [e["event"] for e in r] == ["ADD", "UPDATE"] and r[1]["new_memory"] == "Gina drinks green tea.",
          f"GET /memories/id/history: {r}")
    s, r = http("GET", f"{url}/entities", admin)
    check(s == 200 and {"id": "gina", "type": "user"}.items() <= next(e for e in r if e["id"] == "gina").items(),
          f"GET /entities: {r}")
    s, r = http("DELETE", f"{url}/memories/{gid}", admin)
    check(s == 200 and r["message"] == "Memory deleted successfully", f"DELETE /memories/id: {r}")
    s, r = http("GET", f"{url}/memories/{gid}", admin)
    check(s == 404 and r["error"] == "Memory not found!", f"GET a deleted memory → 404: {s} {r}")
    s, r = http("DELETE", f"{url}/memories/{gid}", admin)
    check(s == 404, "DELETE a deleted memory → 404")
    http("POST", f"{url}/memories", admin, {"messages": [{"role": "user", "content": "Hal runs."}], "user_id": "hal"})
    s, r = http("DELETE", f"{url}/memories", admin)
    check(s == 400, f"DELETE /memories without ids → 400: {s} {r}")
    s, r = http("DELETE", f"{url}/memories?user_id=hal", admin)
    check(s == 200 and r["message"] == "All relevant memories deleted", f"DELETE /memories?user_id: {r}")
    s, r = http("GET", f"{url}/memories?user_id=hal", admin)
    check(r["results"] == [], "hal's memories are gone")
    http("POST", f"{url}/memories", admin, {"messages": [{"role": "user", "content": "Ivy sails."}], "user_id": "ivy"})
    s, r = http("POST", f"{url}/reset", admin)
    check(s == 200 and r["message"] == "All memories reset", f"POST /reset: {r}")
    s, r = http("GET", f"{url}/memories?user_id=ivy", admin)
    check(r["results"] == [], "reset removed ivy's memories")
    s, r = http("GET", f"{url}/memories?user_id=ivy")
    check(s == 401, f"no key → 401: {s}")
    s, r = http("GET", f"{url}/memories?user_id=ivy", "wrong")
    check(s == 401, f"bad X-API-Key → 401: {s}")


def main():
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        env = {**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "warn"}
        admin = create_key(data, env, "--org", "acme", "--role", "admin", "--name", "mem0-test")
        alice_key = create_key(data, env, "--org", "acme", "--user", "alice", "--name", "alice")
        port = free_port()
        server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                                   "--rate-limit-per-minute", "0", "--allow-private-webhooks"],
                                  env=env, stdout=subprocess.PIPE)
        try:
            server.stdout.readline()
            url = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            exercise_client(url, admin, alice_key)
            exercise_batch_feedback_webhooks(url, admin, alice_key)
            exercise_server_routes(url, admin)
            ms = (time.perf_counter() - started) * 1000
        finally:
            server.terminate()
            server.wait(timeout=30)
        check(server.returncode == 0, f"server exited {server.returncode}")
        print(f"mem0ai {MEM0_VERSION}: all {CHECKS} checks passed ({ms:.0f} ms)")


main()
