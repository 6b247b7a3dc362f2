// Drives the status page in Debian's Chromium (playwright-core, no browser download), the way
// an administrator on a phone would: sign in with a token, read the page, retry a dead job.
// Prints what it saw as one JSON object for runtime/tests/all/status_page.rs to judge.
//
//   node status-page.mjs BASE_URL TOKEN SCREENSHOT_PATH [wait-for-text]
import { chromium } from "playwright-core";

const [base, token, screenshot, waitFor] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const seen = {};
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(base + "/status");
  await page.fill("#token", token);
  await page.click("#sign-in");
  await page.waitForSelector("#status:not([hidden])");
  // Locators wait in Playwright's own isolated world. waitForFunction would poll with eval in
  // the page's, which the page's Content-Security-Policy forbids (and fails when it polls).
  await page.locator("#version").filter({ hasText: /\S/ }).waitFor();
  if (waitFor) {
    await page.getByText(waitFor).first().waitFor({ timeout: 30000 });
  }
  const rows = (id) =>
    page.$$eval(`#${id} tbody tr`, (trs) =>
      trs.map((tr) => ({ class: tr.className, text: tr.innerText.replace(/\s+/g, " ").trim() })));
  seen.version = await page.textContent("#version");
  seen.overall = await page.textContent("#overall");
  seen.sources = await rows("sources");
  seen.certificates = await rows("certificates");
  seen.backends = await rows("backends");
  seen.revocation = await rows("revocation");
  seen.revocation_shown = await page.isVisible("#revocation-section");
  seen.attention = await rows("attention");
  seen.jobs = await page.textContent("#jobs");

  // Retry the first dead or failed job from the page.
  const retry = await page.$("[data-retry]");
  if (retry) {
    seen.retried = await retry.getAttribute("data-retry");
    await retry.click();
    await page.locator("#retry-result").filter({ hasText: /\S/ }).waitFor();
    seen.retry_result = await page.textContent("#retry-result");
  }
  await page.screenshot({ path: screenshot, fullPage: true });

  // Where the token may not be: the page's HTML, its URL, lasting storage, cookies.
  seen.token_in_html = (await page.content()).includes(token);
  seen.token_in_url = page.url().includes(token);
  seen.token_in_local_storage = (await page.evaluate(() => JSON.stringify(localStorage))).includes(token);
  seen.token_in_cookies = JSON.stringify(await context.cookies()).includes(token);
  seen.token_in_session_storage = (await page.evaluate(() => JSON.stringify(sessionStorage))).includes(token);
  seen.errors = errors;

  // A new tab of a new session starts signed out.
  const fresh = await browser.newContext();
  const other = await fresh.newPage();
  await other.goto(base + "/status");
  await other.waitForSelector("#sign-in-panel:not([hidden])");
  seen.new_session_signed_out = await other.isVisible("#sign-in-panel");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
