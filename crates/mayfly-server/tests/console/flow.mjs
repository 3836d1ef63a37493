// The web console in headless Chromium (Debian's /usr/bin/chromium driven by playwright-core):
// the story of issue 21, run by crates/mayfly-server/tests/it/console_browser.rs, which starts
// the broker, a PostgreSQL cluster with password authentication and the control server
// (notification receiver and the broker's manual clock), and passes them here by environment:
//
//   MAYFLY_URL          the broker (http://localhost:PORT: Chromium keeps Secure cookies there)
//   MAYFLY_CONTROL      the control server: GET /notifications (the bodies the webhook received),
//                       POST /clock/advance/SECS (moves the broker's clock; answers {"now": secs})
//   MAYFLY_USERS        {"alice": {"password", "totp_base32"}, "bob": ..., "admin": ...}
//   MAYFLY_PG           {"host", "port", "database"}: the target's PostgreSQL
//   MAYFLY_ROLE         the role alice asks for, which needs bob's approval (TARGET/ROLE)
//   MAYFLY_DIRECT_ROLE  a role policy allows at once (TARGET/ROLE)
//   MAYFLY_GLASS_GRANT  a break-glass grant (bob's, revoked) waiting in the review queue
//   MAYFLY_SCREENSHOTS  where screenshots go (PAGE-WIDTH.png)
//   MAYFLY_CHROMIUM     the browser (default /usr/bin/chromium)
//
// The story: alice logs in (password + TOTP) and asks for the role with a reason and a ticket
// using the keyboard only; bob's notification arrives and links to /ui/approvals/{id}; bob follows
// it, logs in, is refused without a fresh second factor, then approves with the keyboard only and
// a TOTP code; alice activates, sees the credential once (a reload answers 410 and shows no
// secret), uses it against the real PostgreSQL, revokes it, and PostgreSQL refuses the login; the
// audit page lists every step with the chain valid; the dashboard's counts equal the API's.
// Every page is photographed at 1280 and 360 px; axe-core checks every page (light and dark) in
// contexts that bypass the CSP; the contexts that keep it fail on any CSP report.
//
// Exit status: 0 when every check held, 1 with the failed check on stderr.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import pg from 'pg';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const AXE = path.join(HERE, 'node_modules/axe-core/axe.min.js');
const WIDTHS = [1280, 360];
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (flow.mjs is run by tests/it/console_browser.rs)`);
  return value;
}

const BASE = env('MAYFLY_URL').replace(/\/$/, '');
const CONTROL = env('MAYFLY_CONTROL').replace(/\/$/, '');
const USERS = JSON.parse(env('MAYFLY_USERS'));
const PG = JSON.parse(env('MAYFLY_PG'));
const ROLE = env('MAYFLY_ROLE');
const DIRECT_ROLE = env('MAYFLY_DIRECT_ROLE');
const GLASS_GRANT = env('MAYFLY_GLASS_GRANT');
const SHOTS = env('MAYFLY_SCREENSHOTS');
const CHROMIUM = process.env.MAYFLY_CHROMIUM || '/usr/bin/chromium';

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;

let current = null; // the page a failure is reported with
let reported = false;
const cspReports = [];
const shotsTaken = [];
const axeFindings = [];

function step(text) {
  console.log(`- ${text}`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- TOTP (RFC 6238, SHA-1, 6 digits, 30 s) at the broker's clock ---------------------------

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    const index = alphabet.indexOf(c);
    if (index < 0) throw new Error('a TOTP secret is not base32');
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

function totpAt(base32, unixSecs) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSecs / 30)));
  const mac = crypto.createHmac('sha1', base32Decode(base32)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const word = mac.readUInt32BE(offset) & 0x7fffffff;
  return String(word % 1_000_000).padStart(6, '0');
}

async function control(method, route) {
  const response = await fetch(`${CONTROL}${route}`, { method });
  check(response.ok, `the control server answered ${response.status} to ${method} ${route}`);
  return response.json();
}

async function advanceClock(secs) {
  const answer = await control('POST', `/clock/advance/${secs}`);
  return answer.now;
}

// A fresh code for `name`: the broker's clock moves to the next 30 s step first, so no code is
// ever replayed (the broker accepts a step only after the last one a user used).
async function totp(name) {
  const now = await advanceClock(30);
  return totpAt(USERS[name].totp_base32, now);
}

// --- Pages -----------------------------------------------------------------------------------

// A context that keeps the CSP: every CSP report (console or securitypolicyviolation) fails.
async function strictContext(browser, who) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(
        `Content Security Policy violation: ${event.violatedDirective} blocked ${event.blockedURI}`,
      );
    });
  });
  context.on('page', (page) => watch(page, who));
  return context;
}

function watch(page, who) {
  page.on('console', (message) => {
    const text = message.text();
    if (/Content Security Policy/i.test(text)) {
      cspReports.push(`${who} at ${page.url()}: ${text}`);
    }
  });
  page.on('pageerror', (error) => {
    cspReports.push(`${who} at ${page.url()}: script error ${error.message}`);
  });
}

async function newPage(context) {
  const page = await context.newPage();
  current = page;
  return page;
}

// Every console answer carries the contract's headers.
function checkHeaders(response, what) {
  check(response, `${what}: no response`);
  const headers = response.headers();
  check(
    headers['content-security-policy'] === CSP,
    `${what}: Content-Security-Policy is ${JSON.stringify(headers['content-security-policy'])}`,
  );
  check(headers['x-content-type-options'] === 'nosniff', `${what}: no X-Content-Type-Options: nosniff`);
  check(/no-store/.test(headers['cache-control'] || ''), `${what}: no Cache-Control: no-store`);
}

async function visit(page, route, expectStatus = 200) {
  current = page;
  const response = await page.goto(`${BASE}${route}`);
  checkHeaders(response, `GET ${route}`);
  check(
    response.status() === expectStatus,
    `GET ${route} answered ${response.status()}, not ${expectStatus}`,
  );
  return response;
}

async function shoot(page, name) {
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 900 });
    const file = path.join(SHOTS, `${name}-${width}.png`);
    await page.screenshot({ path: file, fullPage: true });
    shotsTaken.push(file);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function text(page, selector) {
  const element = await page.$(selector);
  check(element, `${page.url()} has no ${selector}`);
  return (await element.textContent()).trim();
}

async function flash(page) {
  const element = await page.$('#flash');
  return element ? (await element.textContent()).trim() : null;
}

// Waits for the navigation `action` starts (a form posted, a 303 followed).
async function navigating(page, action) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), action()]);
}

async function login(page, name) {
  current = page;
  check(new URL(page.url()).pathname === '/ui/login', `expected the login page, at ${page.url()}`);
  await page.fill('#login-form [name=username]', name);
  await page.fill('#login-form [name=password]', USERS[name].password);
  await page.fill('#login-form [name=totp]', await totp(name));
  await navigating(page, () => page.click('#login-submit'));
  const error = await page.$('#error');
  check(!error, `${name}'s login was refused: ${error && (await error.textContent())}`);
  check(new URL(page.url()).pathname !== '/ui/login', `${name} is still on the login page`);
}

// Keyboard only: Tab until `selector` has the focus.
async function tabTo(page, selector) {
  for (let i = 0; i < 100; i++) {
    const there = await page.evaluate(
      (sel) => document.activeElement !== null && document.activeElement.matches(sel),
      selector,
    );
    if (there) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`${selector} never got the focus by Tab on ${page.url()}`);
}

// Keyboard only: the focused <select> moved with the arrow keys to the option `value`.
async function arrowSelect(page, value) {
  const options = await page.evaluate(() => [...document.activeElement.options].map((o) => o.value));
  check(options.includes(value), `no option ${value} among ${JSON.stringify(options)}`);
  await page.keyboard.press('Home');
  for (let i = 0; i <= options.length; i++) {
    if ((await page.evaluate(() => document.activeElement.value)) === value) return;
    await page.keyboard.press('ArrowDown');
  }
  throw new Error(`the arrow keys never selected ${value}`);
}

async function row(page, table, attribute, id) {
  return page.$(`table#${table} tr[${attribute}="${id}"]`);
}

async function rowState(page, table, attribute, id) {
  const element = await row(page, table, attribute, id);
  check(element, `table#${table} on ${page.url()} has no row ${attribute}=${id}`);
  return element.getAttribute('data-state');
}

// --- PostgreSQL ------------------------------------------------------------------------------

async function pgConnect(user, password) {
  const client = new pg.Client({
    host: PG.host,
    port: PG.port,
    database: PG.database,
    user,
    password,
    connectionTimeoutMillis: 5000,
  });
  client.on('error', () => {});
  await client.connect();
  return client;
}

// --- axe-core --------------------------------------------------------------------------------

async function axeCheck(page, label) {
  await page.addScriptTag({ path: AXE });
  const results = await page.evaluate(() =>
    window.axe.run(document, { resultTypes: ['violations'] }),
  );
  for (const violation of results.violations) {
    if (violation.impact === 'serious' || violation.impact === 'critical') {
      const nodes = violation.nodes
        .slice(0, 5)
        .map((n) => `      ${n.target.join(' ')}: ${n.failureSummary.replace(/\s+/g, ' ')}`)
        .join('\n');
      axeFindings.push(`${label}: ${violation.impact} ${violation.id}: ${violation.help}\n${nodes}`);
    }
  }
}

// --- The story -------------------------------------------------------------------------------

async function main() {
  check(fs.existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: run scripts/services.sh`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--host-resolver-rules=MAP localhost 127.0.0.1'],
  });
  try {
    await story(browser);
  } catch (error) {
    await report(error);
    throw error;
  } finally {
    await browser.close();
  }
}

// What the failed check saw: the page, its text, a screenshot (failure.png).
async function report(error) {
  reported = true;
  console.error(`FAILED: ${error.stack || error.message}`);
  if (!current) return;
  try {
    console.error(`page: ${current.url()}`);
    await current.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true });
    const body = await current.evaluate(() => (document.body ? document.body.innerText : ''));
    console.error(`page text: ${body.slice(0, 3000)}`);
  } catch (cause) {
    console.error(`(the page could not be shown: ${cause.message})`);
  }
}

async function story(browser) {
  let callId = '';
  const reason = 'migrate the orders table (console test)';
  const ticket = 'INC-2101';
  const comment = 'ok for the migration window';

  // 1. alice: the console sends her to the login page, which takes her back afterwards.
  step('alice opens /ui/access and is sent to the login page');
  const aliceContext = await strictContext(browser, 'alice');
  const alice = await newPage(aliceContext);
  const first = await alice.goto(`${BASE}/ui/access`);
  checkHeaders(first, 'GET /ui/login');
  const loginUrl = new URL(alice.url());
  check(loginUrl.pathname === '/ui/login', `no login redirect: at ${alice.url()}`);
  check(loginUrl.searchParams.get('next') === '/ui/access', `next is ${loginUrl.searchParams.get('next')}`);
  await shoot(alice, 'login');
  await login(alice, 'alice');
  check(new URL(alice.url()).pathname === '/ui/access', `after login alice is at ${alice.url()}`);
  const cookies = await aliceContext.cookies();
  const session = cookies.find((c) => c.name === 'mayfly_session');
  check(session, `no mayfly_session cookie: ${JSON.stringify(cookies.map((c) => c.name))}`);
  check(session.secure && session.httpOnly && session.sameSite === 'Strict',
    `the session cookie is not Secure, HttpOnly, SameSite=Strict: ${JSON.stringify(session)}`);

  // 2. The request, keyboard only.
  step(`alice asks for ${ROLE} with the keyboard only`);
  await tabTo(alice, '#role');
  await arrowSelect(alice, ROLE);
  await tabTo(alice, '#ttl');
  await alice.keyboard.press('Control+A');
  await alice.keyboard.type('900');
  await tabTo(alice, '#reason');
  await alice.keyboard.type(reason);
  await tabTo(alice, '#ticket');
  await alice.keyboard.type(ticket);
  await navigating(alice, () => alice.keyboard.press('Enter'));
  check(new URL(alice.url()).pathname === '/ui/access', `after the request alice is at ${alice.url()}`);
  const asked = await flash(alice);
  check(asked && UUID.test(asked), `no #flash naming the request: ${asked}`);
  const requestId = asked.match(UUID)[0];
  const state = await rowState(alice, 'requests', 'data-request-id', requestId);
  check(state === 'pending', `request ${requestId} is ${state}, not pending`);

  // 3. bob's notification links to exactly this request's approval page.
  step('the request.pending notification arrives with its link');
  let notice = null;
  for (let i = 0; i < 100 && !notice; i++) {
    const received = await control('GET', '/notifications');
    notice = received.find((n) => n.event === 'request.pending' && n.request_id === requestId);
    if (!notice) await sleep(200);
  }
  check(notice, `no request.pending notification for ${requestId} reached the receiver`);
  check(notice.url === `${BASE}/ui/approvals/${requestId}`,
    `the notification links to ${notice.url}, not ${BASE}/ui/approvals/${requestId}`);

  // 4. bob follows the link, logs in, lands on the request.
  step('bob follows the link and logs in');
  const bobContext = await strictContext(browser, 'bob');
  const bob = await newPage(bobContext);
  await bob.goto(notice.url);
  check(new URL(bob.url()).searchParams.get('next') === `/ui/approvals/${requestId}`,
    `the link's login page has next=${new URL(bob.url()).searchParams.get('next')}`);
  await login(bob, 'bob');
  check(new URL(bob.url()).pathname === `/ui/approvals/${requestId}`, `bob is at ${bob.url()}`);
  check((await text(bob, '#requester')).includes('alice'), 'the requester is not alice');
  check((await text(bob, '#role')).includes(ROLE.split('/')[1]), `#role does not name ${ROLE}`);
  check((await text(bob, '#reason')).includes(reason), '#reason is not the reason');
  check((await text(bob, '#ticket')).includes(ticket), '#ticket is not the ticket');
  check((await text(bob, '#ttl')).length > 0, '#ttl is empty');
  check((await text(bob, '#policy')).includes('owner-needs-approval'), '#policy does not name the policy');
  await shoot(bob, 'approval-detail');
  await visit(bob, '/ui/approvals');
  check(await row(bob, 'approvals', 'data-request-id', requestId), 'the request is not in table#approvals');
  const link = await bob.$(`table#approvals a[href="/ui/approvals/${requestId}"]`);
  check(link, 'table#approvals has no link to the request');
  await shoot(bob, 'approvals');
  await navigating(bob, () => link.click());

  // 5. Past the step-up window a decision without a code is refused.
  step('bob, no longer fresh, is refused without a TOTP code');
  await advanceClock(11 * 60);
  await bob.fill('#comment', comment);
  // The server must refuse it, whatever the browser would check first.
  await bob.$eval('#totp', (input) => input.removeAttribute('required'));
  await navigating(bob, () => bob.click('#approve'));
  await visit(alice, '/ui/access');
  const still = await rowState(alice, 'requests', 'data-request-id', requestId);
  check(still === 'pending', `approving without a fresh second factor made the request ${still}`);

  // 6. bob approves with the keyboard only, with a TOTP code.
  step('bob steps up and approves with the keyboard only');
  await visit(bob, `/ui/approvals/${requestId}`);
  await tabTo(bob, '#comment');
  await bob.keyboard.press('Control+A');
  await bob.keyboard.type(comment);
  await tabTo(bob, '#totp');
  await bob.keyboard.type(await totp('bob'));
  await tabTo(bob, '#approve');
  await navigating(bob, () => bob.keyboard.press('Enter'));
  const error = await bob.$('#error');
  check(!error, `approving with a code was refused: ${error && (await error.textContent())}`);
  check(new URL(bob.url()).pathname.startsWith('/ui/approvals'), `after approving bob is at ${bob.url()}`);
  check(((await flash(bob)) || '').includes(requestId), `no #flash naming ${requestId} after approving`);

  // 7. alice activates: the credential once.
  step('alice activates and sees the credential once');
  await visit(alice, '/ui/access');
  const approvedRow = await row(alice, 'requests', 'data-request-id', requestId);
  check(approvedRow, 'the request left table#requests');
  const activate = await approvedRow.$('form.activate .activate-submit');
  check(activate, `the approved request (${await approvedRow.getAttribute('data-state')}) has no activate button`);
  await shoot(alice, 'access');
  await navigating(alice, () => activate.click());
  const credentialUrl = alice.url();
  check(new URL(credentialUrl).pathname.startsWith('/ui/credential/'), `activation led to ${credentialUrl}`);
  check(await alice.$('section#credential'), 'no section#credential');
  check(await alice.$('#copy-password'), 'no #copy-password button');
  const username = await text(alice, '#cred-username');
  const password = await text(alice, '#cred-password');
  check(username.length > 0 && password.length >= 16, 'the credential is empty');
  await shoot(alice, 'credential');
  const again = await alice.goto(credentialUrl);
  checkHeaders(again, 'GET the credential again');
  check(again.status() === 410, `the credential URL answered ${again.status()} the second time`);
  check(await alice.$('#credential-gone'), 'no #credential-gone the second time');
  check(!(await alice.content()).includes(password), 'the password is shown a second time');
  await shoot(alice, 'credential-gone');

  // 8. The credential works on the real PostgreSQL, and only with its password.
  step('the credential logs in to PostgreSQL');
  const live = await pgConnect(username, password);
  const one = await live.query('SELECT 1 AS one');
  check(one.rows[0].one === 1, 'SELECT 1 did not answer 1');
  let wrong = null;
  try {
    await (await pgConnect(username, `${password}x`)).end();
  } catch (error) {
    wrong = error;
  }
  check(wrong, 'PostgreSQL took a wrong password (the cluster must check passwords)');

  // 9. The grant with its live time left, revoked from the page.
  step('alice revokes the grant');
  await visit(alice, '/ui/access');
  const grantRows = await alice.$$('table#grants tr[data-grant-id][data-state="active"]');
  check(grantRows.length === 1, `${grantRows.length} active grants in table#grants`);
  const grantId = await grantRows[0].getAttribute('data-grant-id');
  const timeLeft = await grantRows[0].$('.time-left[data-expires-at]');
  check(timeLeft, 'the grant has no .time-left[data-expires-at]');
  const before = (await timeLeft.textContent()).trim();
  let ticking = false;
  for (let i = 0; i < 30 && !ticking; i++) {
    await sleep(100);
    ticking = (await timeLeft.textContent()).trim() !== before;
  }
  check(ticking, `.time-left stays "${before}": app.js does not count down`);
  const revoke = await grantRows[0].$('form.revoke .revoke-submit');
  check(revoke, 'the active grant has no revoke button');
  await navigating(alice, () => revoke.click());
  check(await flash(alice), 'no #flash after revoking');

  step('PostgreSQL refuses the login after the revocation');
  let refused = null;
  for (let i = 0; i < 60 && !refused; i++) {
    try {
      const client = await pgConnect(username, password);
      await client.end();
      await sleep(250);
    } catch (error) {
      refused = error;
    }
  }
  check(refused, 'PostgreSQL still takes the revoked login after 15 s');
  let sessionEnded = false;
  try {
    await live.query('SELECT 1');
  } catch {
    sessionEnded = true;
  }
  check(sessionEnded, 'the session opened with the credential survived the revocation');
  for (let i = 0; i < 75; i++) {
    await visit(alice, '/ui/access');
    const grantState = await alice.$(`table#grants tr[data-grant-id="${grantId}"]`);
    const now = grantState ? await grantState.getAttribute('data-state') : 'gone';
    if (now !== 'active' && now !== 'revoking') break;
    await sleep(200);
  }

  // 10. The audit page, as an admin: every step, the chain valid.
  step('the audit page shows every step with the chain valid');
  const adminContext = await strictContext(browser, 'admin');
  const admin = await newPage(adminContext);
  await admin.goto(`${BASE}/ui/audit`);
  await login(admin, 'admin');
  check(new URL(admin.url()).pathname === '/ui/audit', `the admin is at ${admin.url()}`);
  const expected = {
    'access.request': 'alice',
    'access.approve': 'bob',
    'grant.issue': 'alice',
    'grant.revoke_requested': 'alice',
    'grant.revoked': null,
  };
  for (const [kind, who] of Object.entries(expected)) {
    await visit(admin, `/ui/audit?kind=${encodeURIComponent(kind)}`);
    const rows = await admin.$$('table#events tr[data-seq]');
    const texts = await Promise.all(rows.map((r) => r.textContent()));
    check(texts.some((t) => t.includes(kind) && (!who || t.includes(who))),
      `the audit page has no ${kind} event${who ? ` by ${who}` : ''}: ${JSON.stringify(texts)}`);
  }
  await visit(admin, '/ui/audit');
  const chain = await admin.$('#chain-status');
  check(chain, 'no #chain-status');
  check((await chain.getAttribute('data-valid')) === 'true', `#chain-status says ${await chain.textContent()}`);
  check(await admin.$('#checkpoint'), 'no #checkpoint');
  check(await admin.$('form#audit-filter'), 'no form#audit-filter');
  const exportHref = await admin.$eval('a#export', (a) => a.getAttribute('href'));
  check(exportHref.startsWith('/ui/audit/export'), `a#export links to ${exportHref}`);
  const exported = await adminContext.request.get(`${BASE}${exportHref}`);
  check(exported.ok(), `the export answered ${exported.status()}`);
  const lines = (await exported.text()).split('\n').filter((l) => l.trim());
  check(lines.length > 0 && lines.every((l) => JSON.parse(l)), 'the export is not JSON lines');
  await shoot(admin, 'audit');

  // 11. The admin's other pages.
  step('the admin pages');
  await visit(admin, '/ui/review');
  const glass = await row(admin, 'review', 'data-grant-id', GLASS_GRANT);
  check(glass, `the break-glass grant ${GLASS_GRANT} is not in table#review`);
  check((await glass.textContent()).includes('bob'), 'the review row does not name bob');
  await shoot(admin, 'review');
  const reviewed = await glass.$('form.review button[type="submit"]');
  check(reviewed, 'the break-glass grant has no review button');
  await navigating(admin, () => reviewed.click());
  check(((await flash(admin)) || '').includes(GLASS_GRANT), 'no #flash naming the reviewed grant');
  check(!(await row(admin, 'review', 'data-grant-id', GLASS_GRANT)), 'the reviewed grant is still queued');
  const adminPages = [
    ['/ui/admin/targets', 'admin-targets', 'table#targets'],
    ['/ui/admin/roles', 'admin-roles', 'table#roles'],
    ['/ui/admin/policy', 'admin-policy', 'form#policy-form'],
    ['/ui/admin/users', 'admin-users', 'table#users'],
  ];
  for (const [route, name, selector] of adminPages) {
    await visit(admin, route);
    check(await admin.$(selector), `${route} has no ${selector}`);
    await shoot(admin, name);
  }
  await visit(admin, '/ui/nowhere', 404);
  await shoot(admin, 'not-found');

  // 11b. An agent's tool call that a `@step_up` policy holds for a person: the control server
  // makes it as `agent:claude` for alice with the Python MCP SDK over `/mcp` (a DELETE of one
  // payment through `run_query` on alice's agent's grant); the admin finds it on the approvals
  // page, reads the call on its page, is refused without a fresh second factor, approves with a
  // code; the call then runs exactly once (the test checks the table and the audit after), and a
  // replay or other arguments wait for a new approval. Then the agent revokes its grant.
  step("the admin approves one agent call behind step-up; it runs once");
  await advanceClock(11 * 60);
  const gated = await control('POST', '/call/same');
  check(gated.gate === 'waiting', `the call did not wait: ${JSON.stringify(gated)}`);
  callId = gated.approval_id;
  check(gated.url === `${BASE}/ui/calls/${callId}`, `the call's URL is ${gated.url}`);
  await visit(admin, '/ui/approvals');
  check(await row(admin, 'calls', 'data-call-id', callId), `the call ${callId} is not in table#calls`);
  const callLink = await admin.$(`table#calls a[href="/ui/calls/${callId}"]`);
  check(callLink, 'table#calls has no link to the call');
  await navigating(admin, () => callLink.click());
  check((await text(admin, '#call-tool')).includes('run_query'), 'the call page does not name the tool');
  check((await text(admin, '#call-subject')).includes('user:alice'), 'the call page does not name the subject');
  check((await text(admin, '#call-chain')).includes('agent:claude'), 'the call page does not show the act chain');
  check((await text(admin, '#call-summary')).includes('DELETE FROM payments'), 'the call page does not show the arguments');
  await shoot(admin, 'call-detail');
  await admin.$eval('#totp', (input) => input.removeAttribute('required'));
  await navigating(admin, () => admin.click('#approve-call'));
  check(await admin.$('#error'), 'approving a call without a fresh factor showed no #error');
  const early = await control('POST', '/call/same');
  check(early.gate === 'waiting' && early.approval_id === callId, `before the approval the call is ${JSON.stringify(early)}`);
  await tabTo(admin, '#totp');
  await admin.keyboard.type(await totp('admin'));
  await tabTo(admin, '#approve-call');
  await navigating(admin, () => admin.keyboard.press('Enter'));
  const callError = await admin.$('#error');
  check(!callError, `approving the call with a code was refused: ${callError && (await callError.textContent())}`);
  check(((await flash(admin)) || '').includes(callId), `no #flash naming ${callId} after approving the call`);
  const ran = await control('POST', '/call/same');
  check(ran.gate === 'proceed', `the approved call did not run: ${JSON.stringify(ran)}`);
  const replay = await control('POST', '/call/same');
  check(replay.gate === 'waiting' && replay.approval_id !== callId, `a replay was not held: ${JSON.stringify(replay)}`);
  const other = await control('POST', '/call/other');
  check(other.gate === 'waiting' && other.approval_id !== callId, `other arguments were not held: ${JSON.stringify(other)}`);
  const done = await control('POST', '/call/done');
  check(done.gate === 'proceed', `the agent could not revoke its grant: ${JSON.stringify(done)}`);

  // 12. axe-core on every page, in contexts that bypass the CSP (light, then dark). alice's
  // light pass also leaves a live grant (the credential page is checked on its one showing) and
  // a pending request, for the dashboard.
  step('axe-core on every page, light and dark');
  for (const colorScheme of ['light', 'dark']) {
    const anonymous = await browser.newContext({ bypassCSP: true, colorScheme });
    const page = await anonymous.newPage();
    current = page;
    await page.goto(`${BASE}/ui/login`);
    await axeCheck(page, `${colorScheme} /ui/login`);
    await anonymous.close();

    const views = [
      [aliceContext, 'alice', ['/ui/access', '/ui/approvals', '/ui/dashboard']],
      [bobContext, 'bob', ['/ui/approvals', `/ui/approvals/${requestId}`, '/ui/dashboard']],
      [adminContext, 'admin', ['/ui/audit', '/ui/review', '/ui/dashboard', `/ui/calls/${callId}`, '/ui/admin/targets',
        '/ui/admin/roles', '/ui/admin/policy', '/ui/admin/users', '/ui/nowhere']],
    ];
    for (const [strict, who, routes] of views) {
      const context = await browser.newContext({
        bypassCSP: true,
        colorScheme,
        storageState: await strict.storageState(),
      });
      const page = await context.newPage();
      current = page;
      for (const route of routes) {
        await page.goto(`${BASE}${route}`);
        check(new URL(page.url()).pathname !== '/ui/login', `the axe context of ${who} was sent to log in`);
        await axeCheck(page, `${colorScheme} ${who} ${route}`);
      }
      if (who === 'alice' && colorScheme === 'light') {
        await page.goto(`${BASE}/ui/access`);
        await page.selectOption('#role', DIRECT_ROLE);
        await page.fill('#ttl', '600');
        await page.fill('#reason', 'look at the dashboard (console test)');
        await navigating(page, () => page.click('#request-submit'));
        const allowed = (await flash(page) || '').match(UUID);
        check(allowed, `no #flash naming the request for ${DIRECT_ROLE}`);
        const button = await page.$(`table#requests tr[data-request-id="${allowed[0]}"] .activate-submit`);
        check(button, `the request for ${DIRECT_ROLE} cannot be activated`);
        await navigating(page, () => button.click());
        check(await page.$('section#credential'), 'no section#credential for the second grant');
        await axeCheck(page, `${colorScheme} alice /ui/credential`);
        await page.goto(`${BASE}/ui/credential/${'0'.repeat(43)}`);
        await axeCheck(page, `${colorScheme} alice an unknown credential`);
        await page.goto(`${BASE}/ui/access`);
        await page.selectOption('#role', ROLE);
        await page.fill('#ttl', '300');
        await page.fill('#reason', 'waits for the dashboard (console test)');
        await navigating(page, () => page.click('#request-submit'));
        check(UUID.test(await flash(page) || ''), 'no #flash naming the pending request');
      }
      await context.close();
    }
  }

  // 13. The dashboard's counts are the API's.
  step("the dashboard's counts equal the API's");
  await visit(admin, '/ui/dashboard');
  const count = async (id) => {
    const value = await admin.$eval(`#${id}`, (e) => e.getAttribute('data-value'));
    check(/^\d+$/.test(value || ''), `#${id} has data-value ${value}`);
    return Number(value);
  };
  const loginAnswer = await fetch(`${BASE}/v1/auth/password/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: USERS.admin.password, totp: await totp('admin') }),
  });
  check(loginAnswer.ok, `the API login answered ${loginAnswer.status}`);
  const { token } = await loginAnswer.json();
  const api = async (route) => {
    const answer = await fetch(`${BASE}${route}`, { headers: { authorization: `Bearer ${token}` } });
    check(answer.ok, `GET ${route} answered ${answer.status}`);
    return answer.json();
  };
  const grants = await api('/v1/grants');
  const pending = await api('/v1/requests?pending=true');
  const activeGrants = grants.filter((g) => g.state === 'active').length;
  const pendingRequests = pending.filter((r) => r.state === 'pending').length;
  check(activeGrants === 1 && pendingRequests === 1,
    `the story should leave 1 active grant and 1 pending request, the API says ${activeGrants} and ${pendingRequests}`);
  check((await count('count-active-grants')) === activeGrants,
    `#count-active-grants ${await count('count-active-grants')} != the API's ${activeGrants}`);
  check((await count('count-pending-requests')) === pendingRequests,
    `#count-pending-requests ${await count('count-pending-requests')} != the API's ${pendingRequests}`);
  check((await count('count-standing')) === 0, `#count-standing is ${await count('count-standing')}`);
  for (const figure of ['chart-active-grants', 'chart-lifetimes', 'chart-revocation-lag',
    'chart-approval-time', 'chart-standing']) {
    check(await admin.$(`#${figure} svg[role="img"][aria-labelledby]`), `#${figure} has no labelled svg`);
    check(await admin.$(`#${figure} table`), `#${figure} has no table of its numbers`);
  }
  await shoot(admin, 'dashboard');

  // 14. Logout.
  step('alice logs out');
  await visit(alice, '/ui/access');
  await navigating(alice, () => alice.click('#logout'));
  await alice.goto(`${BASE}/ui/access`);
  check(new URL(alice.url()).pathname === '/ui/login', `after logout /ui/access shows ${alice.url()}`);

  check(cspReports.length === 0, `CSP reports in the strict contexts:\n  ${cspReports.join('\n  ')}`);
  check(axeFindings.length === 0, `axe-core found serious or critical violations:\n  ${axeFindings.join('\n  ')}`);
  console.log(`screenshots: ${shotsTaken.map((f) => path.basename(f)).join(' ')}`);
}

main().then(
  () => {
    console.log('the console story passed');
    process.exit(0);
  },
  (error) => {
    if (!reported) console.error(`FAILED: ${error.stack || error.message}`);
    if (cspReports.length) console.error(`CSP reports:\n  ${cspReports.join('\n  ')}`);
    if (axeFindings.length) console.error(`axe-core:\n  ${axeFindings.join('\n  ')}`);
    process.exit(1);
  },
);
