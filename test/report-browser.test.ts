/**
 * The report's index.html in a real headless Chromium (Debian `chromium`,
 * driven by playwright-core; no browser is downloaded): it loads from file://
 * without console errors or failed requests, and the plots are drawn (a
 * screenshot of each plot is not blank and holds the series' colours).
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, describe, it } from "node:test";
import report from "../stages/report/index.js";
import { ctxFor, fakeInputs } from "./helpers/report-fixture.js";
import { countPixels, decodePng } from "./helpers/report-png.js";

const CHROMIUM = process.env.VALLEY_CHROMIUM ?? "/usr/bin/chromium";
// Without a browser the test is skipped on a workstation, but fails under CI.
const skip = !existsSync(CHROMIUM) && !process.env.CI ? `no Chromium at ${CHROMIUM}` : false;

describe("report page in headless Chromium", { skip }, () => {
  const root = mkdtempSync(join(tmpdir(), "valley-report-web-"));
  const out = join(root, "out");
  after(() => rmSync(root, { recursive: true, force: true }));

  before(async () => {
    mkdirSync(out);
    await report.run(ctxFor(out, fakeInputs(join(root, "in")), { title: "valley browser test" }));
  });

  it("loads without console errors and draws the plots", async () => {
    const { chromium } = await import("playwright-core");
    const context = await chromium.launchPersistentContext(join(root, "profile"), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
      ],
      viewport: { width: 1400, height: 1000 },
      timeout: 60_000,
    });
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      const problems: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning")
          problems.push(`console ${m.type()}: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
      const res = await page.goto(pathToFileURL(join(out, "index.html")).href, {
        waitUntil: "load",
      });
      assert.ok(res === null || res.ok(), "page loads");
      assert.equal(await page.title(), "valley browser test");
      assert.equal(await page.locator("#results tbody tr").count(), 8);
      assert.equal(await page.locator("#results tbody tr.base").count(), 2);

      for (const id of ["#valley-plot", "#rates-plot"]) {
        const svg = page.locator(`${id} svg`);
        const box = await svg.boundingBox();
        assert.ok(
          box && box.width > 300 && box.height > 200,
          `${id}: laid out (${JSON.stringify(box)})`,
        );
        const img = decodePng(await svg.screenshot());
        const c = countPixels(img);
        assert.ok(c.ink > c.total * 0.02, `${id}: ink ${c.ink}/${c.total}`);
        assert.ok(c.colored > 300, `${id}: coloured pixels ${c.colored}`);
        // The plot area itself (inside the axes, away from the legend on the right) is drawn on.
        const inner = countPixels(img, {
          x: Math.round(img.width * 0.15),
          y: Math.round(img.height * 0.15),
          width: Math.round(img.width * 0.55),
          height: Math.round(img.height * 0.6),
        });
        assert.ok(inner.colored > 100, `${id}: coloured pixels in the plot area ${inner.colored}`);
      }
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});
