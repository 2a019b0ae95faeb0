// Clicks through the status page's actions in headless Chromium, as an operator would, and
// checks each result through the admin API. Run by tests/status_page.rs with:
//   STATUS_URL  the admin listener's /status
//   TOKEN       the admin token
//   POOL, ROUTE the pool and the route of the backend to act on
//   CHROMIUM    the browser binary
// Exits non-zero (with the reason on stderr) at the first check that fails.
const { chromium } = require('playwright-core');

const { STATUS_URL, TOKEN, POOL, ROUTE, CHROMIUM } = process.env;
const pools = new URL('/api/pools', STATUS_URL).href;

async function backend() {
  const answer = await (await fetch(pools)).json();
  const pool = answer.pools.find((p) => p.name === POOL);
  return pool.backends.find((b) => b.route === ROUTE);
}

// Waits (bounded) until `check` holds for the backend as the admin API reports it.
async function waitFor(what, check) {
  const until = Date.now() + 20000;
  for (;;) {
    const state = await backend();
    if (check(state)) return;
    if (Date.now() > until) throw new Error(`${what} never happened: ${JSON.stringify(state)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(STATUS_URL);
    const row = () => page.locator(`tr.backend[data-route="${ROUTE}"]`);
    const result = page.locator('#action-result');

    // Without the token: the page says it was refused, and nothing changed.
    await row().getByRole('button', { name: 'drain' }).click();
    await result.filter({ hasText: 'refused (401)' }).waitFor({ timeout: 10000 });
    const untouched = await backend();
    if (untouched.state !== 'active') throw new Error(`changed without the token: ${JSON.stringify(untouched)}`);

    // With the token: drain, then weight 3.
    await page.locator('input[name=token]').fill(TOKEN);
    await row().getByRole('button', { name: 'drain' }).click();
    await waitFor('draining', (b) => b.state === 'draining');
    await page.goto(STATUS_URL); // the token stays in this tab's sessionStorage
    await row().locator('input[name=weight]').fill('3');
    await row().getByRole('button', { name: 'set weight' }).click();
    await waitFor('weight 3', (b) => b.weight === 3);
    // The page shows both once it has reloaded.
    await page.locator(`tr.backend[data-route="${ROUTE}"][data-state="draining"][data-weight="3"]`)
      .waitFor({ timeout: 15000 });

    // Stop, then enable again.
    await row().getByRole('button', { name: 'stop' }).click();
    await waitFor('stopped', (b) => b.state === 'stopped');
    await page.goto(STATUS_URL);
    await row().getByRole('button', { name: 'enable' }).click();
    await waitFor('active again', (b) => b.state === 'active');
    console.log('clicked through: drain, weight 3, stop, enable');
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
