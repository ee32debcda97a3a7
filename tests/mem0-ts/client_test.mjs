// Mem0's own TypeScript client (npm mem0ai, pinned in package.json) against a
// live Engram, run with the system `node`.
//
// Usage: node client_test.mjs ENGRAM_BIN MODEL_DIR
//
// Starts `engram serve` on a free port with a fresh data directory (or the
// store in ENGRAM_STORE), creates API keys with `engram keys create`, then
// drives `new MemoryClient({apiKey, host})` through add, search, getAll, get,
// update, history, delete, deleteAll, users, batchUpdate, batchDelete, feedback and the
// webhook methods (with a receiver on loopback checking Mem0's payload and
// the Standard Webhooks signature), asserting content.

import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

process.env.MEM0_TELEMETRY = "false"; // no network here
const { default: MemoryClient } = await import("mem0ai");

const [BIN, MODEL] = process.argv.slice(2);
let checks = 0;
class CheckFailed extends Error {}
function check(cond, what) {
  // Thrown, so the server is stopped before the process exits.
  if (!cond) throw new CheckFailed(what);
  checks += 1;
}
async function rejects(fn, what) {
  try {
    await fn();
  } catch (e) {
    if (e instanceof CheckFailed) throw e;
    check(true, what);
    return e;
  }
  check(false, `${what}: nothing was thrown`);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A webhook receiver: records every request. */
function receiver() {
  const got = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      got.push({ headers: req.headers, body });
      res.writeHead(200).end("ok");
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ server, got, url: `http://127.0.0.1:${server.address().port}/hook` })),
  );
}

function verify(secret, r) {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const mac = createHmac("sha256", key)
    .update(`${r.headers["webhook-id"]}.${r.headers["webhook-timestamp"]}.${r.body}`)
    .digest("base64");
  return r.headers["webhook-signature"].split(" ").includes(`v1,${mac}`);
}

async function waitFor(cond, what) {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  check(false, `timed out waiting for ${what}`);
}

const results = (r) => (Array.isArray(r) ? r : r.results);

async function exercise(host, admin, aliceKey) {
  const client = new MemoryClient({ apiKey: admin, host });
  await client.ping();
  check(client.organizationId === "acme", `ping gives the key's org: ${client.organizationId}`);

  // add / search / getAll / get
  let r = await client.add([{ role: "user", content: "I moved to Lisbon and I am vegetarian now." }], {
    user_id: "alice",
    infer: false,
    metadata: { source: "chat" },
  });
  check(results(r)[0].event === "ADD", `add: ${JSON.stringify(r)}`);
  const lisbon = results(r)[0].id;
  r = await client.add("I play the cello on weekends.", { user_id: "alice" });
  const cello = results(r)[0].id;
  await client.add([{ role: "user", content: "Bob lives in Berlin and loves steak." }], { user_id: "bob" });
  r = await client.add("I moved to Lisbon and I am vegetarian now.", { user_id: "alice" });
  check(results(r)[0].event === "NOOP", "a duplicate is NOOP");

  r = await client.search("where does she live?", { filters: { user_id: "alice" }, top_k: 1 });
  check(results(r).length === 1 && results(r)[0].id === lisbon, `search top_k=1: ${JSON.stringify(r)}`);
  check(results(r)[0].metadata.source === "chat" && results(r)[0].score > 0, "search hit fields");
  r = await client.search("music", { filters: { user_id: "alice" }, rerank: true, keywordSearch: true, latestOnly: true });
  check(results(r)[0].id === cello, `v3 options accepted: ${JSON.stringify(r)}`);
  await rejects(
    () => client.search("music", { filters: { user_id: "alice" }, latestOnly: false }),
    "latest_only=false is refused, not ignored",
  );
  r = await client.getAll({ filters: { user_id: "alice" } });
  check(results(r).length === 2, `getAll: ${JSON.stringify(r)}`);
  const m = await client.get(lisbon);
  check(m.memory.startsWith("I moved to Lisbon") && m.userId === "alice", `get: ${JSON.stringify(m)}`);

  // update / history
  await client.update(lisbon, { text: "I moved to Porto and I am vegetarian now." });
  const h = await client.history(lisbon);
  check(h.length === 2 && h[1].event === "UPDATE" && h[1].oldMemory.includes("Lisbon"), `history: ${JSON.stringify(h)}`);

  // users
  const users = await client.users();
  const names = results(users).map((u) => u.name).sort();
  check(names.includes("alice") && names.includes("bob"), `users: ${JSON.stringify(users)}`);

  // batchUpdate / batchDelete: all or nothing, errors name the memory
  const ids = [];
  for (const t of ["Tea at five.", "Runs on Sundays.", "Reads sci-fi."]) {
    ids.push(results(await client.add(t, { user_id: "carol" }))[0].id);
  }
  r = await client.batchUpdate(ids.map((id, i) => ({ memoryId: id, text: `Carol fact ${i} updated.` })));
  check(r.message === "Successfully updated 3 memories", `batchUpdate: ${JSON.stringify(r)}`);
  check((await client.get(ids[1])).memory === "Carol fact 1 updated.", "batchUpdate wrote");
  const missing = "00000000-0000-7000-8000-000000000000";
  const e = await rejects(
    () => client.batchUpdate([{ memoryId: ids[0], text: "Must not land." }, { memoryId: missing, text: "x" }]),
    "batchUpdate with an unknown id fails",
  );
  check(String(e.message).includes(missing), `the error names the memory: ${e.message}`);
  check((await client.get(ids[0])).memory === "Carol fact 0 updated.", "nothing of the failed batch landed");
  r = await client.batchDelete(ids.slice(0, 2));
  check(r.message === "Successfully deleted 2 memories", `batchDelete: ${JSON.stringify(r)}`);
  await rejects(() => client.get(ids[0]), "a batch-deleted memory is gone");

  // feedback: kept, and used by search
  r = await client.feedback({ memoryId: ids[2], feedback: "NEGATIVE", feedbackReason: "stale" });
  check(r.feedback === "NEGATIVE", `feedback: ${JSON.stringify(r)}`);
  check((await client.get(ids[2])).feedback === "NEGATIVE", "get shows the feedback");
  check(results(await client.search("Carol fact", { filters: { user_id: "carol" } })).length === 1, "NEGATIVE still found");
  await client.feedback({ memoryId: ids[2], feedback: "VERY_NEGATIVE" });
  check(results(await client.search("Carol fact", { filters: { user_id: "carol" } })).length === 0, "VERY_NEGATIVE leaves search");

  // A key bound to alice cannot touch bob's memories in a batch.
  const alice = new MemoryClient({ apiKey: aliceKey, host });
  const bobs = results(await client.getAll({ filters: { user_id: "bob" } }))[0].id;
  await rejects(() => alice.batchDelete([bobs]), "a bound key cannot batch-delete outside its binding");
  check(results(await client.getAll({ filters: { user_id: "bob" } })).length === 1, "bob's memory stays");

  // webhooks, with a receiver on loopback
  const recv = await receiver();
  const hook = await client.createWebhook({ name: "ts", url: recv.url, eventTypes: ["memory_add", "memory_delete"] });
  check(hook.webhookId && hook.secret.startsWith("whsec_"), `createWebhook: ${JSON.stringify(hook)}`);
  const hooks = await client.getWebhooks({ projectId: client.projectId });
  check(hooks.length === 1 && hooks[0].url === recv.url, `getWebhooks: ${JSON.stringify(hooks)}`);
  const added = results(await client.add("Dave keeps bees.", { user_id: "dave" }))[0].id;
  await waitFor(() => recv.got.length === 1, "the memory_add delivery");
  const d = recv.got[0];
  const payload = JSON.parse(d.body);
  check(
    payload.event_details.id === added && payload.event_details.event === "ADD" &&
      payload.event_details.data.memory === "Dave keeps bees.",
    `Mem0's payload: ${d.body}`,
  );
  check(verify(hook.secret, d), "the delivery's signature verifies");
  r = await client.updateWebhook({ webhookId: hook.webhookId, name: "renamed", eventTypes: ["memory_update"] });
  check(r.message === "Webhook updated successfully", `updateWebhook: ${JSON.stringify(r)}`);
  r = await client.deleteWebhook({ webhookId: hook.webhookId });
  check(r.message === "Webhook deleted successfully", `deleteWebhook: ${JSON.stringify(r)}`);
  check((await client.getWebhooks({ projectId: client.projectId })).length === 0, "the webhook is gone");
  recv.server.close();

  // delete / deleteAll
  r = await client.delete(cello, { deleteLinked: true });
  check(/deleted/i.test(r.message), `delete: ${JSON.stringify(r)}`);
  await rejects(() => client.get(cello), "a deleted memory is 404");
  r = await client.deleteAll({ user_id: "bob" });
  check(results(await client.getAll({ filters: { user_id: "bob" } })).length === 0, `deleteAll: ${JSON.stringify(r)}`);

  // A method Engram does not serve errors; it never answers a silent 200.
  await rejects(() => client.createMemoryExport({ schema: "{}", filters: { user_id: "alice" } }), "exports are refused");
}

const dir = mkdtempSync(path.join(tmpdir(), "engram-ts-"));
const data = path.join(dir, "data");
const env = { ...process.env, ENGRAM_MODEL_DIR: MODEL, ENGRAM_LOG: "warn" };
const key = (...args) =>
  execFileSync(BIN, ["keys", "create", "--data-dir", data, ...args], { env, encoding: "utf8" }).trim();
const admin = key("--org", "acme", "--role", "admin", "--name", "ts-test");
const aliceKey = key("--org", "acme", "--user", "alice", "--name", "alice");
const port = await freePort();
const server = spawn(
  BIN,
  ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", data, "--rate-limit-per-minute", "0", "--allow-private-webhooks"],
  { env, stdio: ["ignore", "pipe", "inherit"] },
);
await new Promise((resolve) => server.stdout.once("data", resolve));
const started = performance.now();
let failed = null;
try {
  await exercise(`http://127.0.0.1:${port}`, admin, aliceKey);
} catch (e) {
  failed = e;
}
server.kill("SIGTERM");
const code = await new Promise((resolve) => server.on("exit", (c) => resolve(c)));
rmSync(dir, { recursive: true, force: true });
if (failed || code !== 0) {
  console.error("mem0ai (TypeScript): FAILED:", failed ? failed.message : `server exited ${code}`);
  if (failed && !(failed instanceof CheckFailed)) console.error(failed);
  process.exit(1);
}
console.log(`mem0ai (TypeScript) 3.3.1: all ${checks} checks passed (${Math.round(performance.now() - started)} ms)`);
