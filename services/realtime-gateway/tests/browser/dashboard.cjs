// Drives the dashboard in headless Chromium for tests/dashboard.rs.
//
// Opens the dashboard signed in, waits until live events fill the table, finds the message of a
// delivered one by clicking it, and prints READY;
// then waits until the circuit of the upstream named in RELAIS_UPSTREAM shows as open (the
// test causes an outage after READY), takes a screenshot and exits 0. Any failure exits 1
// with the reason on stderr.
"use strict";

const { chromium } = require("playwright-core");

const base = process.env.RELAIS_GATEWAY_URL;
const token = process.env.RELAIS_TOKEN;
const screenshot = process.env.RELAIS_SCREENSHOT;
const upstream = process.env.RELAIS_UPSTREAM || "default";

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.RELAIS_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // Tests run as root in CI, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("response", (response) => {
      if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
    });
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    await page.goto(`${base}/dashboard/#token=${encodeURIComponent(token)}`);
    await page.waitForSelector('#connection[data-state="live"]', { timeout: 30000 });
    await page.waitForFunction(() => document.querySelectorAll("#events tbody tr").length >= 5, null, { timeout: 60000 });
    await page.waitForFunction(() => document.getElementById("rate").textContent !== "–", null, { timeout: 30000 });
    const cells = await page.$$eval("#events tbody tr:first-child td", (tds) => tds.map((td) => td.textContent));
    if (!/^[0-9a-f]{32}$/.test(cells[6])) throw new Error(`the event row shows no trace id: ${cells}`);
    // Clicking a delivered event finds every decision on its message.
    const delivered = await page.waitForSelector("#events tbody tr:has(td.outcome-delivered)", { timeout: 30000 });
    const messageId = await delivered.getAttribute("data-message");
    await delivered.click();
    await page.waitForSelector("#decisions:not([hidden]) tbody tr", { timeout: 30000 });
    const found = await page.$$eval("#decisions tbody tr:first-child td", (tds) => tds.map((td) => td.textContent));
    if (found[1] !== "delivered") throw new Error(`the lookup of ${messageId} shows ${found}`);
    const said = await page.textContent("#lookup-status");
    if (!said.startsWith(`${messageId}:`)) throw new Error(`the lookup says: ${said}`);
    console.log("READY");

    await page.waitForSelector(`#circuits tbody tr[data-upstream="${upstream}"][data-state="open"]`, { timeout: 90000 });
    await page.waitForFunction(() => document.querySelectorAll("#workers tbody tr").length >= 1, null, { timeout: 30000 });
    await page.screenshot({ path: screenshot, fullPage: true });
    // The CSP forbids anything the page does not need; a violation or script error is a bug.
    const relevant = problems.filter((text) => !text.includes("WebSocket"));
    if (relevant.length) throw new Error(relevant.join("\n"));
    console.log("CIRCUIT-OPEN");
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error.stack || String(error));
    process.exit(1);
  },
);
