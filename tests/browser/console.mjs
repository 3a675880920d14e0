// The approvers' console in a real browser: headless Chromium driven by
// playwright-core, against a running `airlock serve --http`, with the
// agent's side played by the official Python MCP SDK (mcp_call.py).
// Started by scripts/browser-tests, which sets:
//   AIRLOCK_URL        http://127.0.0.1:PORT
//   AIRLOCK_APPROVER   an approver's token (approvals.approvers: alice)
//   AIRLOCK_CALLER     a caller's token (serve.tokens: agent-1)
//   PLAYWRIGHT_DIR     where playwright-core is installed
//   MCP_PYTHON         the Python with the `mcp` package
//   SHOTS              where screenshots go
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const base = process.env.AIRLOCK_URL;
const shots = process.env.SHOTS;
const here = path.dirname(fileURLToPath(import.meta.url));

/** Start one MCP tool call as the agent; resolves with its result line. */
function agentCall(tool, args, meta) {
  const child = spawn(
    process.env.MCP_PYTHON,
    [path.join(here, 'mcp_call.py'), `${base}/mcp`, tool, JSON.stringify(args), JSON.stringify(meta)],
    { env: { ...process.env, AIRLOCK_TEST_TOKEN: process.env.AIRLOCK_CALLER }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  child.stdout.on('data', (chunk) => { out += chunk; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill(); reject(new Error(`${tool}: no result in 120 s`)); }, 120_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const lines = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
      const result = lines.find((l) => l.event === 'result');
      if (!result) reject(new Error(`${tool}: the MCP client exited ${code} without a result: ${out}`));
      else resolve(result);
    });
  });
}

/** The approvals page (every state: one that expires must still be
 * found) until a row with `text` shows up; that row's link. */
async function waitForApproval(page, text) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    await page.goto(`${base}/console/approvals?state=all`);
    const row = page.locator('#approvals tbody tr', { hasText: text });
    if (await row.count() > 0) return row.first().locator('a').first();
    if (Date.now() > deadline) throw new Error(`no pending approval showing "${text}"`);
    await page.waitForTimeout(250);
  }
}

async function signIn(page, token) {
  await page.goto(`${base}/console/login`);
  await page.fill('#token', token);
  await page.click('button[type=submit]');
}

const results = [];
async function scenario(name, run) {
  try {
    await run();
    results.push([name, null]);
    console.log(`ok   ${name}`);
  } catch (error) {
    results.push([name, error]);
    console.log(`FAIL ${name}\n${error.stack}`);
  }
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1180, height: 820 } });
  const page = await context.newPage();
  const violations = [];
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });

  await scenario("a caller's token is refused at the console", async () => {
    await signIn(page, process.env.AIRLOCK_CALLER);
    await page.locator('.notice.error').waitFor();
    assert.match(await page.locator('.notice.error').innerText(), /caller's token/);
    assert.equal(new URL(page.url()).pathname, '/console/login');
    assert.equal((await context.cookies()).length, 0, 'no session cookie for a caller');
    await page.screenshot({ path: `${shots}/caller-refused.png` });
  });

  await scenario('an approver signs in with an HttpOnly, SameSite=Strict cookie', async () => {
    await signIn(page, process.env.AIRLOCK_APPROVER);
    await page.waitForURL('**/console/approvals');
    const [cookie] = await context.cookies();
    assert.equal(cookie.name, 'airlock_console');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/console');
    assert.ok(!page.url().includes(process.env.AIRLOCK_APPROVER), 'no token in the URL');
    // Scripts cannot read the session.
    assert.equal(await page.evaluate(() => document.cookie), '');
  });

  await scenario("an agent's call waits, the approver approves, the call completes", async () => {
    const marker = 'refund for order <b>#1001</b>';
    const call = agentCall(
      'billing__refund',
      { account: '9182', amount_cents: 240000, reason: 'damaged goods', card_last4: '4242' },
      { 'airlock/idempotency_key': 'browser-approve-1', 'airlock/reason': marker },
    );
    const link = await waitForApproval(page, marker);
    await page.screenshot({ path: `${shots}/approvals.png` });
    await link.click();
    await page.locator('form.decide').waitFor();
    const text = await page.locator('main').innerText();
    for (const field of ['billing/refund', 'irreversible', 'agent-1', marker, 'Expires', '[redacted:']) {
      assert.ok(text.includes(field), `the approval page shows ${field}`);
    }
    assert.ok(!text.includes('4242'), 'the card digits are redacted');
    assert.equal(await page.locator('main b').count(), 0, 'the reason is text, not markup');
    await page.fill('#reason', 'verified with the customer');
    await page.screenshot({ path: `${shots}/approval.png` });
    // The card digits are not shown: the button alone does not approve.
    await page.click('button.approve');
    await page.locator('p.notice.error').waitFor();
    assert.match(await page.locator('p.notice.error').innerText(), /not approved: values were redacted/);
    assert.match(await page.locator('h1').innerText(), /pending/);
    await page.fill('#reason', 'verified with the customer');
    await page.check('input[name=unseen]');
    await page.click('button.approve');
    await page.locator('.state-approved, .state-consumed').first().waitFor();
    const result = await call;
    assert.equal(result.is_error, false, result.text);
    await page.reload();
    assert.match(await page.locator('h1').innerText(), /approved|consumed/);
    await page.screenshot({ path: `${shots}/approved.png` });
  });

  await scenario('the approver rejects with a reason; the call fails', async () => {
    const marker = 'second refund, browser test';
    const call = agentCall(
      'billing__refund',
      { account: '9182', amount_cents: 100, reason: 'duplicate' },
      { 'airlock/idempotency_key': 'browser-reject-1', 'airlock/reason': marker },
    );
    const link = await waitForApproval(page, marker);
    await link.click();
    await page.locator('form.decide').waitFor();
    // A rejection without a reason is refused by the host, and said so.
    await page.click('button.reject');
    await page.locator('.notice.error').waitFor();
    assert.match(await page.locator('.notice.error').innerText(), /needs a reason/);
    await page.fill('#reason', 'duplicate of an earlier refund');
    await page.click('button.reject');
    await page.locator('.state-rejected').first().waitFor();
    const result = await call;
    assert.equal(result.is_error, true);
    assert.match(result.text, /reject/i);
    await page.screenshot({ path: `${shots}/rejected.png` });
  });

  await scenario('an approval nobody decides expires; the call fails and nothing can approve it', async () => {
    const marker = 'note that nobody approves';
    const call = agentCall('notes__add', { title: 'late', body: 'too late' }, { 'airlock/reason': marker });
    const link = await waitForApproval(page, marker);
    await link.click();
    const url = page.url();
    const result = await call;
    assert.equal(result.is_error, true);
    assert.match(result.text, /expire/i);
    await page.goto(url);
    await page.locator('.state-expired').first().waitFor();
    assert.equal(await page.locator('form.decide').count(), 0, 'no decision form on an expired approval');
    await page.screenshot({ path: `${shots}/expired.png` });
  });

  await scenario("the audit log tells each call's story and verifies", async () => {
    await page.goto(`${base}/console/audit?plugin=billing&tool=refund`);
    await page.locator('#audit').waitFor();
    await page.screenshot({ path: `${shots}/audit.png` });
    await page.locator('#audit a', { hasText: 'story' }).first().click();
    const story = await page.locator('main').innerText();
    assert.match(story, /call_finished|approval_decided/);
    await page.goto(`${base}/console/audit/verify`);
    assert.match(await page.locator('#verdict').innerText(), /^Verified/);
  });

  await scenario('plugins show their grant and inspect findings; the mode switch is recorded', async () => {
    await page.goto(`${base}/console/plugins/billing`);
    assert.match(await page.locator('main').innerText(), /Findings/);
    await page.screenshot({ path: `${shots}/plugin.png`, fullPage: true });
    await page.goto(`${base}/console/mode`);
    await page.fill('#reason', 'browser test');
    await page.click('form.decide button');
    await page.locator('#mode', { hasText: 'READ-ONLY' }).waitFor();
    await page.screenshot({ path: `${shots}/mode.png` });
    await page.click('form.decide button');
    await page.locator('#mode', { hasText: 'Normal' }).waitFor();
    await page.goto(`${base}/console/audit?event=mode_changed`);
    assert.equal(await page.locator('#audit tbody tr').count(), 2);
  });

  await scenario('signing out ends the session', async () => {
    await page.goto(`${base}/console/approvals`);
    await page.click('header form button');
    await page.waitForURL('**/console/login');
    await page.goto(`${base}/console/audit`);
    assert.equal(new URL(page.url()).pathname, '/console/login');
  });

  await scenario('no page broke its Content-Security-Policy', async () => {
    assert.deepEqual(violations, []);
  });
} finally {
  await browser.close();
}

const failed = results.filter(([, e]) => e).length;
console.log(`browser tests: ${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
