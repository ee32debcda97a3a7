"""Drives Engram's MCP server with the official MCP Python SDK, over stdio and streamable HTTP.

Usage: client.py ENGRAM_BIN MODEL_DIR
Exits non-zero on the first failed check. Prints one line per transport with the
median round-trip of search_memory.
"""
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

BIN, MODEL = sys.argv[1], sys.argv[2]
TOOLS = {
    "add_memory": (False, False),
    "search_memory": (True, False),
    "list_memories": (True, False),
    "get_memory": (True, False),
    "update_memory": (False, True),
    "delete_memory": (False, True),
    "delete_all_memories": (False, True),
}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")


async def exercise(session: ClientSession, user_args: dict, label: str):
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    check(set(tools) == set(TOOLS), f"{label}: tool names {sorted(tools)}")
    for name, (read_only, destructive) in TOOLS.items():
        t = tools[name]
        check(t.description and len(t.description) > 60, f"{label}: {name} has a real description")
        check(t.input_schema.get("type") == "object", f"{label}: {name} input schema")
        check(t.output_schema is not None, f"{label}: {name} output schema")
        a = t.annotations
        check(a is not None and a.read_only_hint is read_only, f"{label}: {name} readOnlyHint")
        check(a.destructive_hint is destructive, f"{label}: {name} destructiveHint")
        check(a.open_world_hint is False and a.idempotent_hint is not None, f"{label}: {name} hints")

    r = await session.call_tool("add_memory", {"text": "I am vegetarian and I live in Lisbon.", **user_args})
    check(not r.is_error, f"{label}: add ok {r.content}")
    mem_id = r.structured_content["results"][0]["id"]
    check(r.structured_content["results"][0]["event"] == "ADD", f"{label}: ADD event")
    r = await session.call_tool("add_memory", {"text": "I am vegetarian and I live in Lisbon.", **user_args})
    check(r.structured_content["results"][0]["event"] == "NOOP", f"{label}: duplicate is NOOP")

    timings = []
    for _ in range(20):
        t0 = time.perf_counter()
        r = await session.call_tool("search_memory", {"query": "where does the user live?", **user_args})
        timings.append((time.perf_counter() - t0) * 1000)
    check(not r.is_error and "Lisbon" in r.structured_content["results"][0]["memory"], f"{label}: search finds it")

    r = await session.call_tool("list_memories", {**user_args})
    check(len(r.structured_content["results"]) == 1, f"{label}: list has one memory")
    r = await session.call_tool("get_memory", {"id": mem_id})
    check(r.structured_content["id"] == mem_id, f"{label}: get")
    r = await session.call_tool("update_memory", {"id": mem_id, "text": "I am vegetarian and I live in Porto."})
    check("Porto" in r.structured_content["memory"], f"{label}: update")
    res = await session.read_resource(f"memory://{mem_id}")
    check("Porto" in res.contents[0].text, f"{label}: resource read")
    prompt = await session.get_prompt("use_memory")
    check("search_memory" in prompt.messages[0].content.text, f"{label}: prompt")

    # Invalid input comes back as a tool error, never a crash.
    for name, args in [
        ("get_memory", {"id": "not-a-uuid"}),
        ("search_memory", {"query": "  ", **user_args}),
        ("delete_all_memories", {"confirm": False, **user_args}),
        ("add_memory", {**user_args}),
    ]:
        r = await session.call_tool(name, args)
        check(r.is_error and r.content and r.content[0].text, f"{label}: {name} invalid input is isError")

    r = await session.call_tool("delete_memory", {"id": mem_id})
    check(r.structured_content["deleted"] is True, f"{label}: delete")
    r = await session.call_tool("get_memory", {"id": mem_id})
    check(r.is_error, f"{label}: deleted memory is gone")
    await session.call_tool("add_memory", {"text": "Temporary note about chess.", **user_args})
    r = await session.call_tool("delete_all_memories", {"confirm": True, **user_args})
    check(r.structured_content["deleted"] == 1, f"{label}: delete all")
    return statistics.median(timings)


async def stdio_run(data):
    params = StdioServerParameters(
        command=BIN,
        args=["mcp", "--data-dir", data, "--user-id", "alice"],
        env={**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "warn"},
    )
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            ms = await exercise(s, {}, "stdio")
            # The bound scope cannot be widened.
            res = await s.call_tool("search_memory", {"query": "x", "user_id": "bob"})
            check(res.is_error, "stdio: another user_id is refused")
            return ms


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(data, env, *args):
    out = subprocess.run([BIN, "keys", "create", "--data-dir", data, *args], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


async def http_run(data):
    port = free_port()
    env = {**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "warn"}
    admin = create_key(data, env, "--org", "acme", "--role", "admin")
    dora = create_key(data, env, "--org", "acme", "--user", "dora")
    eli = create_key(data, env, "--org", "acme", "--user", "eli")
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data], env=env, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx.AsyncClient() as c:
            r = await c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
            check(r.status_code == 401, f"http: key-less request refused ({r.status_code})")
            r = await c.post(url, headers={"Authorization": "Bearer engram_0123456789abcdef_" + "0" * 64}, json={})
            check(r.status_code == 401, f"http: unknown key refused ({r.status_code})")
            r = await c.post(url, headers={"Authorization": f"Bearer {admin}", "Origin": "http://evil.example"}, json={})
            check(r.status_code == 403, f"http: foreign Origin refused ({r.status_code})")
        def client(key):
            headers = {"Authorization": f"Bearer {key}"}
            return streamable_http_client(url, http_client=httpx.AsyncClient(headers=headers, timeout=60))
        async with client(admin) as (r, w):
            async with ClientSession(r, w) as s:
                ms = await exercise(s, {"user_id": "carol"}, "http")
        # Two keys bound to different users never see each other's memories.
        async with client(dora) as (r1, w1):
            async with ClientSession(r1, w1) as a:
                await a.initialize()
                res = await a.call_tool("add_memory", {"text": "Dora's secret recipe uses saffron."})
                check(res.structured_content["results"][0]["event"] == "ADD", "http: dora adds with her key's binding")
                dora_id = res.structured_content["results"][0]["id"]
                async with client(eli) as (r2, w2):
                    async with ClientSession(r2, w2) as b:
                        await b.initialize()
                        res = await b.call_tool("search_memory", {"query": "saffron recipe"})
                        check(res.structured_content["results"] == [], "http: another key sees nothing")
                        res = await b.call_tool("list_memories", {})
                        check(res.structured_content["results"] == [], "http: another key lists nothing")
                        res = await b.call_tool("search_memory", {"query": "saffron", "user_id": "dora"})
                        check(res.is_error and "forbidden" in res.content[0].text, "http: naming another user is refused")
                        res = await b.call_tool("get_memory", {"id": dora_id})
                        check(res.is_error and "not_found" in res.content[0].text, "http: another key cannot get it")
                        res = await b.call_tool("delete_memory", {"id": dora_id})
                        check(res.is_error, "http: another key cannot delete it")
                res = await a.call_tool("get_memory", {"id": dora_id})
                check(res.structured_content["memory"] == "Dora's secret recipe uses saffron.", "http: dora's memory intact")
        return ms
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def main():
    with tempfile.TemporaryDirectory() as d:
        ms = await stdio_run(os.path.join(d, "stdio"))
        print(f"stdio: all checks passed; search_memory round trip median {ms:.1f} ms")
        ms = await http_run(os.path.join(d, "http"))
        print(f"http: all checks passed; search_memory round trip median {ms:.1f} ms")


asyncio.run(main())
