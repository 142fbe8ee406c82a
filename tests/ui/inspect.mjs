// Loads ztunnel's traffic view in Debian's headless chromium and prints what
// a user sees, as one JSON line, for tests/tests/ui.rs to check:
//   node inspect.mjs <page url> <workload id to click> <screenshot.png>
// Waits (up to 20 s) for an edge, a denied row and, after the click, the
// workload's denials. Every request the page makes is listed, so the test
// can check that none leaves the page's origin.
import { chromium } from "playwright-core";

const [url, workload, screenshot] = process.argv.slice(2);
if (!url || !workload || !screenshot) {
  console.error("usage: node inspect.mjs <url> <namespace/workload> <screenshot.png>");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.AMBIT_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector("#graph path.edge", { timeout: 20000 });
  await page.waitForSelector('#flows tr[data-decision="deny"]', { timeout: 20000 });
  await page.click(`#graph g.node[data-id="${workload}"] circle`);
  await page.waitForSelector("#workload #denials li", { timeout: 20000 });
  const seen = await page.evaluate(() => ({
    nodes: [...document.querySelectorAll("#graph g.node")].map((n) => ({
      id: n.dataset.id,
      namespace: n.dataset.namespace,
    })),
    edges: [...document.querySelectorAll("#graph path.edge")].map((e) => ({
      source: e.dataset.source,
      target: e.dataset.target,
      security: e.dataset.security,
      stroke: e.getAttribute("stroke"),
    })),
    rows: [...document.querySelectorAll("#flows tr")].map((r) => ({
      decision: r.dataset.decision,
      direction: r.dataset.direction,
      src: r.querySelector("td.src").textContent,
      dst: r.querySelector("td.dst").textContent,
      policy: r.querySelector("td.policy").textContent,
    })),
    workload: document.querySelector("#workload dl")?.innerText ?? "",
    denials: [...document.querySelectorAll("#workload #denials li")].map((l) => l.textContent),
    status: document.getElementById("status").textContent,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  // Requests over the page's life, per second (the page polls).
  const seconds = (Date.now() - started) / 1000;
  console.log(JSON.stringify({ ...seen, requests, seconds, errors }));
} finally {
  await browser.close();
}
