#!/usr/bin/env python3
"""Fuzz every route of a live Engram with schemathesis (property-based, from /openapi.json).

Usage: fuzz.py ENGRAM_BIN MODEL_DIR [MAX_EXAMPLES]

Starts `engram serve` on a free port with a fresh data directory and an admin key, runs
schemathesis with every check except positive_data_acceptance (the schema cannot say
"name at least one scope id"), plus our own: every 4xx/5xx is RFC 9457 problem+json.
Fails on any failure; prints the summary line.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile

BIN, MODEL = sys.argv[1], sys.argv[2]
MAX_EXAMPLES = sys.argv[3] if len(sys.argv) > 3 else "50"
HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        env = {**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "warn"}
        key = subprocess.run([BIN, "keys", "create", "--data-dir", data, "--org", "acme", "--role", "admin",
                              "--name", "fuzz"], env=env, check=True, capture_output=True, text=True).stdout.strip()
        port = free_port()
        server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                                   "--rate-limit-per-minute", "0"], env=env, stdout=subprocess.PIPE)
        try:
            server.stdout.readline()
            run = subprocess.run(
                [SCHEMATHESIS, "run", f"http://127.0.0.1:{port}/openapi.json",
                 "-H", f"Authorization: Bearer {key}",
                 "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                 "--max-examples", MAX_EXAMPLES, "--workers", "2", "--seed", "20261123",
                 "--report-dir", os.path.join(d, "report")],
                env={**env, "PYTHONPATH": HERE, "SCHEMATHESIS_HOOKS": "fuzz_hooks", "NO_COLOR": "1"},
                capture_output=True, text=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
        out = run.stdout + run.stderr
        summary = re.search(r"Test cases:\s*\n\s*(.+)", out)
        summary = summary.group(1).strip() if summary else "no summary"
        if run.returncode != 0 or server.returncode != 0:
            print(out)
            sys.exit(f"schemathesis: FAILED ({summary}); server exit {server.returncode}")
        print(f"schemathesis: {summary}; 0 failures, every 4xx problem+json")


main()
