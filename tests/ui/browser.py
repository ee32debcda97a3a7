"""Drives the dashboard in a real Chromium (Debian's chromium + chromium-driver, headless)
against a real `engram serve`.

Usage: browser.py ENGRAM_BIN MODEL_DIR [SCREENSHOT_DIR]
Set ENGRAM_STORE to run against Postgres. Exits non-zero on the first failed check or on
any browser console error. Saves a screenshot of each page to SCREENSHOT_DIR (default: a
temporary directory; `make screenshots` writes docs/img/).
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

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

BIN, MODEL = sys.argv[1], sys.argv[2]
SHOTS = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="engram-ui-")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
STEPS = 0


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")


def step(what):
    global STEPS
    STEPS += 1
    print(f"  step {STEPS}: {what}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(data, env, *args):
    out = subprocess.run([BIN, "keys", "create", "--data-dir", data, *args], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def api(base, key, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


class Browser:
    def __init__(self, base):
        self.base = base
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.d.set_page_load_timeout(60)

    def go(self, path, expect_error_status=False):
        self.d.get(self.base + path)
        # An error page's own status is logged by Chromium as a failed load: expected there.
        self.console_clean(path, self.base + path if expect_error_status else None)

    def console_clean(self, where, page_itself=None):
        errors = [e for e in self.d.get_log("browser") if e.get("level") == "SEVERE"
                  and not (page_itself and e.get("source") == "network"
                           and e.get("message", "").startswith(page_itself + " "))]
        check(not errors, f"console errors on {where}: {errors}")

    def shot(self, name):
        """The whole page (up to 2,400 px high) at the current width."""
        width = self.d.get_window_size()["width"]
        height = self.d.execute_script("return document.documentElement.scrollHeight")
        self.d.set_window_size(width, max(600, min(height + 140, 2400)))
        self.d.save_screenshot(os.path.join(SHOTS, f"ui-{name}.png"))
        self.d.set_window_size(width, 900 if width > 500 else 844)

    def h1(self):
        return self.d.find_element(By.TAG_NAME, "h1").text

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def submit(self, form_css):
        form = self.d.find_element(By.CSS_SELECTOR, form_css)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(self.d, 30).until(EC.staleness_of(form))
        self.console_clean(f"after submitting {form_css}")

    def labelled(self, where):
        """Every visible input, select and textarea has a label (axe-style basics)."""
        missing = self.d.execute_script("""
            return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
              .filter(el => !(el.id && document.querySelector(`label[for="${el.id}"]`))
                         && !el.getAttribute('aria-label') && !el.closest('label'))
              .map(el => el.outerHTML);""")
        check(not missing, f"{where}: inputs without a label: {missing}")

    def quit(self):
        self.d.quit()


def sign_in(b, key, expect_h1="Overview"):
    b.go("/ui")
    check("/ui/login" in b.d.current_url, f"signed out, /ui goes to the sign-in page ({b.d.current_url})")
    field = b.d.find_element(By.NAME, "api_key")
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    WebDriverWait(b.d, 30).until(EC.url_matches(r"/ui($|\?|/)(?!login)"))
    check(b.h1() == expect_h1, f"signed in, on {expect_h1} ({b.h1()})")


def run(b, base, admin, alice, dead_job):
    step("sign-in page (redirected from /ui)")
    b.go("/ui")
    check("/ui/login" in b.d.current_url, "redirected to sign in")
    b.labelled("login")
    b.shot("login")
    step("a wrong key is refused with a message")
    field = b.d.find_element(By.NAME, "api_key")
    field.send_keys("engram_0123456789abcdef_" + "0" * 64)
    field.send_keys(Keys.ENTER)
    WebDriverWait(b.d, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "p.error")))
    check("not accepted" in b.text(), "wrong key message")
    b.d.get_log("browser")  # the 401 of that form post is logged by Chromium: expected

    step("sign in with an operator key")
    sign_in(b, admin)
    check(b.d.find_elements(By.CSS_SELECTOR, "svg.chart"), "overview charts")
    check("Memories" in b.text() and "Jobs" in b.text(), "overview cards")
    b.labelled("overview")
    b.shot("overview")

    step("keyboard: the first Tab reaches the skip link, with a visible focus")
    b.d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = b.d.switch_to.active_element
    check(active.text == "Skip to content", f"first focus is the skip link ({active.text!r})")
    outline = b.d.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    check(outline not in ("", "none"), f"focus is visible ({outline})")

    step("scopes: alice is listed with her memories")
    b.go("/ui/scopes")
    check("alice" in b.text() and "bob" in b.text(), "scopes listed")
    b.labelled("scopes")
    b.shot("scopes")

    step("browse alice's scope")
    b.d.find_element(By.LINK_TEXT, "alice").click()
    WebDriverWait(b.d, 30).until(EC.url_contains("/ui/memories?user_id=alice"))
    b.console_clean("alice's memories")
    check("green tea" in b.text() and "Lisbon" in b.text(), "alice's memories listed")
    check("door code" not in b.text(), "bob's memory not in alice's scope")
    b.labelled("memories")
    b.shot("memories")

    step("filter by text")
    b.d.find_element(By.ID, "contains").send_keys("lisbon")
    b.submit("form.filters")
    check("Lisbon" in b.text() and "green tea" not in b.text(), "filtered list")

    step("search and see explanations")
    b.go("/ui/search?user_id=alice&q=what+does+alice+drink&top_k=5")
    check("green tea" in b.text(), "search found the tea memory")
    check("Alice: I drink a flat white" in b.text(), "search found Alice's own turn")
    check(b.d.find_elements(By.CSS_SELECTOR, "table.signals svg.bar"), "per-signal bars")
    for signal in ["semantic", "keyword", "context", "speaker named", "fused", "decay", "kind weight", "final"]:
        check(signal in b.text(), f"explanation shows {signal}")
    check("vector path" in b.text() and "tokens to inject" in b.text(), "path and tokens")
    b.labelled("search")
    b.shot("search")

    step("open a memory from the search")
    b.d.find_element(By.PARTIAL_LINK_TEXT, "green tea").click()
    WebDriverWait(b.d, 30).until(EC.url_contains("/ui/memories/"))
    memory_url = b.d.current_url
    check(b.h1() == "Memory", "memory page")

    step("edit it and see the new version in the timeline")
    text = b.d.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Alice likes oolong tea.")
    b.submit("form[action$='/edit']")
    check("Alice likes oolong tea." in b.d.find_element(By.TAG_NAME, "blockquote").text, "current text updated")
    timeline = b.d.find_element(By.CSS_SELECTOR, "ol.timeline").text
    check("UPDATE version 2" in timeline and "green tea" in timeline, f"timeline shows the update: {timeline}")
    b.labelled("memory")
    b.shot("memory")

    step("revert to version 1")
    b.submit("form[action$='/revert']")
    check("Alice likes green tea." in b.d.find_element(By.TAG_NAME, "blockquote").text, "reverted text")
    check("REVERT version 3" in b.d.find_element(By.CSS_SELECTOR, "ol.timeline").text, "revert in the timeline")

    step("as of a time before the edit")
    b.d.find_element(By.ID, "as_of").send_keys("2000-01-01")
    b.submit("form[action*='/ui/memories/'][method=get]")
    check("did not exist yet" in b.text(), "as_of before creation")

    step("jobs: the dead job with its error")
    b.go("/ui/jobs?state=dead")
    check("dead" in b.text(), "dead job listed")
    b.shot("jobs")
    b.go(f"/ui/jobs/{dead_job}")
    check("Retry this job" in b.text(), "retry button")
    step("retry the dead job")
    b.submit("form[action$='/retry']")
    b.go("/ui/audit?action=job.retry")
    check(dead_job in b.text(), "the retry is in the audit log")
    b.labelled("audit")
    b.shot("audit")

    step("keys: create one (secret shown once)")
    b.go("/ui/keys")
    b.d.find_element(By.ID, "name").send_keys("browser-suite")
    b.d.find_element(By.ID, "new-user_id").send_keys("alice")
    b.submit("form[action='/ui/keys']")
    check("shown only once" in b.text(), "secret shown")
    secret = b.d.find_element(By.ID, "new-secret").text
    check(secret.startswith("engram_"), "a key secret")
    b.labelled("keys")
    b.shot("keys")

    step("revoke it; its key no longer works")
    rows = [r for r in b.d.find_elements(By.CSS_SELECTOR, "tbody tr") if "browser-suite" in r.text]
    check(len(rows) == 1, "the new key is listed")
    b.d.execute_script("window.confirm = () => true")
    rows[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    # The page reloads under the wait: rows read mid-reload are stale, so they are read again.
    WebDriverWait(b.d, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: any("browser-suite" in r.text and "revoked" in r.text
                      for r in d.find_elements(By.CSS_SELECTOR, "tbody tr")))
    try:
        api(base, secret, "GET", "/v1/memories?user_id=alice")
        check(False, "a revoked key is refused")
    except urllib.error.HTTPError as e:
        check(e.code == 401, f"revoked key gets 401 ({e.code})")

    step("API reference renders offline")
    b.go("/docs")
    WebDriverWait(b.d, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info")))
    check("Engram" in b.text(), "the reference names Engram")
    b.console_clean("/docs")
    b.shot("docs")

    step("phone width: no horizontal scrolling")
    b.d.set_window_size(390, 844)
    for path in ["/ui", "/ui/memories?user_id=alice", "/ui/search?user_id=alice&q=tea"]:
        b.go(path)
        width = b.d.execute_script("return document.documentElement.scrollWidth")
        check(width <= 400, f"{path} fits a phone ({width}px)")
    b.shot("phone")
    b.d.set_window_size(1280, 900)

    step("sign out")
    b.d.find_element(By.CSS_SELECTOR, "form[action='/ui/logout'] button").click()
    WebDriverWait(b.d, 30).until(EC.url_contains("/ui/login"))
    check("signed out" in b.text(), "signed out message")
    b.go("/ui/memories?user_id=alice")
    check("/ui/login" in b.d.current_url, "pages need a session again")

    step("a key bound to alice sees only alice")
    sign_in(b, alice)
    b.go("/ui/memories?user_id=bob", expect_error_status=True)
    check(b.h1() == "Not allowed" and "door code" not in b.text(), "bob's scope refused")
    step("bad input: an unknown memory gets a readable page")
    b.go("/ui/memories/01a23b77-31f3-741a-9c42-8d3a3e5d6ac3", expect_error_status=True)
    check(b.h1() == "Not found" and "Nothing was changed" in b.text(), "a readable 404 page")
    b.shot("error")
    b.go("/ui/scopes")
    check("bob" not in b.text(), "bob not listed")
    check(not b.d.find_elements(By.LINK_TEXT, "Keys"), "no admin menu")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "ENGRAM_MODEL_DIR": MODEL, "ENGRAM_LOG": "warn"}
        admin = create_key(data, env, "--org", "acme", "--role", "operator")
        alice = create_key(data, env, "--org", "acme", "--user", "alice")
        port = free_port()
        # An LLM that is not there: an inferred async add dies, for the jobs page.
        dead_llm = f"http://127.0.0.1:{free_port()}/v1"
        proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                                 "--llm-base-url", dead_llm, "--llm-max-retries", "0",
                                 "--job-max-attempts", "1"], env=env, stdout=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        b = None
        try:
            proc.stdout.readline()
            for text, user in [("Alice likes green tea.", "alice"),
                               ("Alice moved to Lisbon in May 2024.", "alice"),
                               ("Alice's sister Maria is a nurse in Porto.", "alice"),
                               ("Bob's door code is 4711.", "bob")]:
                api(base, admin, "POST", "/v1/memories", {"text": text, "user_id": user, "infer": False})
            # A named turn: its speaker is known, and a question naming Alice weighs it up.
            api(base, admin, "POST", "/v1/memories",
                {"messages": [{"role": "user", "name": "Alice", "content": "I drink a flat white every morning."}],
                 "user_id": "alice", "infer": False})
            job = api(base, admin, "POST", "/v1/memories",
                      {"messages": [{"role": "user", "content": "I play chess on Sundays."}],
                       "user_id": "alice", "async": True})["job_id"]
            for _ in range(100):
                if api(base, admin, "GET", f"/v1/jobs/{job}")["status"] == "dead":
                    break
                time.sleep(0.2)
            else:
                check(False, "the job against a missing LLM died")
            for q in ["tea", "where does alice live", "sister"]:
                api(base, admin, "POST", "/v1/memories/search", {"query": q, "user_id": "alice"})
            b = Browser(base)
            started = time.time()
            run(b, base, admin, alice, job)
            print(f"browser suite ({os.environ.get('ENGRAM_STORE', 'sqlite').split(':')[0]}): "
                  f"all {STEPS} steps passed in {time.time() - started:.1f} s; screenshots in {SHOTS}")
        finally:
            if b:
                b.quit()
            proc.terminate()
            proc.wait(timeout=20)


main()
