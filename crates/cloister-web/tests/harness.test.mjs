// The test harness itself: Chromium runs with the switches lib.mjs means it to have.
import { test } from "node:test";
import assert from "node:assert/strict";
import { launch, ourDisabledFeatures } from "./lib.mjs";

test("Chromium keeps Playwright's disabled features as well as ours (a repeated --disable-features keeps only the last)", async () => {
  const browser = await launch();
  try {
    const page = await (await browser.newContext()).newPage();
    await page.goto("chrome://version");
    const line = (await page.locator("#command_line").textContent()) ?? "";
    const lists = [...line.matchAll(/--disable-features=(\S+)/g)].map((m) => m[1].split(","));
    assert.ok(lists.length >= 1, `no --disable-features in ${line}`);
    const effective = new Set(lists.at(-1));
    for (const f of [...lists.flat(), ...ourDisabledFeatures]) {
      assert.ok(effective.has(f), `${f} is not in the last --disable-features (Playwright's list changed? update lib.mjs): ${line}`);
    }
  } finally {
    await browser.close();
  }
});
