"""End-to-end smoke test of the LLM pipeline against a REAL small model (issue 16).

Usage (inside `scripts/llm run`, which sets ENGRAM_TEST_LLM_URL / ENGRAM_TEST_LLM_MODEL):
    smoke.py ENGRAM_BIN MODEL_DIR

A real `engram serve` with a llama.cpp server running Qwen2.5-Coder-0.5B: a short multi-session
conversation is added asynchronously, then
  - every job ends (done, or dead with a clear error) within a stated bound;
  - at least one memory holds a key entity of the conversation;
  - no job is ever run by two workers at once (from the workers' "job claimed" / "job ended" logs);
  - a `kill -9` mid-job resumes on restart and completes exactly once.
It asserts robustness, not accuracy: the model is far weaker than what users run.
Prints per job: state, attempts, seconds, tokens, fact checks — the figures docs/eval.md quotes.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN, MODEL = sys.argv[1], sys.argv[2]
LLM_URL = os.environ.get("ENGRAM_TEST_LLM_URL")
LLM_MODEL = os.environ.get("ENGRAM_TEST_LLM_MODEL", "qwen2.5-coder-0.5b-instruct")
# A job's bound: a 0.5B model on 2 busy cores answers an extraction in 10-60 s; a job makes at
# most a few calls per attempt, and its attempt budget is 5 leases of 60 s.
JOB_BOUND_S = 900

SESSIONS = [
    ("s1", "2026-03-02T09:00:00Z", [
        {"role": "user", "content": "Hi, I'm Dana. I work as a nurse at Mercy Hospital in Boston."},
        {"role": "assistant", "content": "Nice to meet you, Dana! Nursing is demanding work."},
        {"role": "user", "content": "I'm allergic to penicillin, so please remember that."},
    ]),
    ("s2", "2026-03-09T18:30:00Z", [
        {"role": "user", "content": "My golden retriever Biscuit turned three yesterday."},
        {"role": "assistant", "content": "Happy birthday to Biscuit!"},
    ]),
    ("s3", "2026-03-16T08:15:00Z", [
        {"role": "user", "content": "I moved from Boston to Denver last week for a new job."},
    ]),
]
ENTITIES = ["Dana", "Mercy", "Boston", "penicillin", "Biscuit", "Denver", "nurse", "retriever"]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    def __init__(self, data, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "info", "NO_COLOR": "1"}
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", data, "--insecure-no-auth",
             "--llm-base-url", LLM_URL, "--llm-model", LLM_MODEL, "--llm-concurrency", "1",
             "--workers", "2", "--job-lease-secs", "60"],
            env=env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if call(self.base, "GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            check(self.proc.poll() is None, f"engram serve exited early (see {log_path})")
            time.sleep(0.5)
        raise SystemExit("FAIL: engram serve did not start within 120 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()


def add(srv, run_id, date, messages):
    status, body = call(srv.base, "POST", "/v1/memories",
                        {"messages": messages, "user_id": "dana", "run_id": run_id, "timestamp": date})
    check(status == 202, f"async add accepted ({status} {body})")
    return body["job_id"]


def wait_jobs(srv, ids, bound):
    deadline = time.time() + bound
    jobs = {}
    while time.time() < deadline:
        for j in ids:
            status, body = call(srv.base, "GET", f"/v1/jobs/{j}")
            check(status == 200, f"job {j} readable ({status})")
            jobs[j] = body
        if all(b["status"] in ("done", "dead") for b in jobs.values()):
            return jobs
        time.sleep(2)
    raise SystemExit(f"FAIL: jobs did not end within {bound} s: "
                     f"{ {j: b['status'] for j, b in jobs.items()} }")


CLAIM = re.compile(r"job (claimed|ended).*?job=(\S+).*?worker=(\S+)")


def claims(log_path):
    """(event, job, worker) in log order."""
    out = []
    with open(log_path) as f:
        for line in f:
            m = CLAIM.search(line)
            if m:
                out.append((m.group(1), m.group(2).strip('"'), m.group(3).strip('"')))
    return out


def no_overlap(events, label):
    """A job is never claimed by a second worker while the first still runs it."""
    running = {}
    for ev, job, worker in events:
        if ev == "claimed":
            check(job not in running, f"{label}: job {job} claimed by {worker} while {running.get(job)} runs it")
            running[job] = worker
        else:
            running.pop(job, None)


def report(jobs, started):
    for j, b in jobs.items():
        r = b.get("result") or {}
        u = r.get("usage") or {}
        secs = (time.time() - started)
        print(f"  job {j[:8]}: {b['status']}, attempts {b['attempts']}, "
              f"tokens {u.get('prompt_tokens', 0)}+{u.get('completion_tokens', 0)}, "
              f"results {[x['event'] for x in r.get('results', [])]}, checks {r.get('checks')}, "
              f"truncated {r.get('truncated')}, fallback {r.get('fallback')}, "
              f"error {b.get('last_error')!r}")
    print(f"  all ended after {secs:.0f} s")


def main():
    check(LLM_URL, "ENGRAM_TEST_LLM_URL is set (run me through `scripts/llm run`)")
    with tempfile.TemporaryDirectory() as data:
        log1 = os.path.join(data, "serve-1.log")
        srv = Server(data, log1)
        try:
            started = time.time()
            ids = [add(srv, run, date, msgs) for run, date, msgs in SESSIONS]
            jobs = wait_jobs(srv, ids, JOB_BOUND_S)
            print(f"smoke: {len(ids)} jobs against {LLM_MODEL}")
            report(jobs, started)
            for j, b in jobs.items():
                if b["status"] == "dead":
                    check(b.get("last_error"), f"dead job {j} says why")
            check(any(b["status"] == "done" for b in jobs.values()), "at least one job completed")
            status, body = call(srv.base, "GET", "/v1/memories?user_id=dana&limit=100")
            check(status == 200, f"list ({status})")
            texts = [m["memory"] for m in body["results"]]
            print(f"  memories: {texts}")
            check(any(e.lower() in t.lower() for t in texts for e in ENTITIES),
                  f"a memory holds a key entity of the conversation: {texts}")
            status, ready = call(srv.base, "GET", "/readyz")
            print(f"  readyz llm: {ready.get('checks', {}).get('llm')}")

            # kill -9 mid-job: the restarted server resumes it and completes it exactly once.
            victim = add(srv, "s4", "2026-03-20T10:00:00Z", [
                {"role": "user", "content": "Please remember that my sister Maya lives in Portland."}])
            deadline = time.time() + 120
            while time.time() < deadline:
                if any(ev == "claimed" and job == victim for ev, job, _ in claims(log1)):
                    break
                time.sleep(0.2)
            check(any(ev == "claimed" and job == victim for ev, job, _ in claims(log1)), "the job was claimed")
            time.sleep(1.0)
            srv.kill9()
        finally:
            if srv.proc.poll() is None:
                srv.stop()
        no_overlap(claims(log1), "first server")

        log2 = os.path.join(data, "serve-2.log")
        srv = Server(data, log2)
        try:
            started = time.time()
            # The dead worker's lease (60 s) runs out, then a worker of the new process takes it.
            jobs = wait_jobs(srv, [victim], JOB_BOUND_S)
            print("smoke: after kill -9")
            report(jobs, started)
            b = jobs[victim]
            check(b["status"] == "done", f"the killed job completed after restart: {b}")
            check(b["attempts"] >= 2, f"it took another attempt ({b['attempts']})")
            status, body = call(srv.base, "GET", "/v1/memories?user_id=dana&run_id=s4&limit=100")
            texts = [m["memory"] for m in body["results"]]
            results = b["result"]["results"]
            added = [r for r in results if r["event"] == "ADD"]
            check(len(texts) == len(added), f"its effects landed once: {texts} vs {results}")
        finally:
            srv.stop()
        no_overlap(claims(log2), "second server")
    print("smoke: ok")


if __name__ == "__main__":
    main()
