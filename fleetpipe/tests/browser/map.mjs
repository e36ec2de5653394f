// The live map in a real browser: Debian's Chromium, headless, driven by
// playwright-core. Run by fleetpipe/tests/map_page.rs during a real
// `fleetpipe demo --database` run:
//
//   node map.mjs <fleet map url> <share map url> <shared vehicle id> [screenshot.png]
//
// Checks, each failing with a sentence on stderr and exit code 1:
// vehicles are drawn, coloured by state as the legend says, and move; fences
// are drawn; a vehicle.arrived event reaches the ticker; clicking a vehicle
// draws its track (more than one point); the share link's page shows
// exactly its one vehicle and asks for nothing a share link may not read;
// a dropped feed is reconnected with its resume token and resumed, with no
// REST request; a refused share link says so; no page requests anything
// from another origin, and no console errors.
import { chromium } from 'playwright-core';

const [fleetUrl, shareUrl, sharedVehicle, screenshot] = process.argv.slice(2);
if (!fleetUrl || !shareUrl || !sharedVehicle) {
  console.error('usage: node map.mjs <fleet map url> <share map url> <shared vehicle id> [screenshot.png]');
  process.exit(2);
}
const origin = new URL(fleetUrl).origin;
const STATES = ['moving', 'parked', 'charging', 'offline'];

class Failure extends Error {}
const fail = (message) => {
  throw new Failure(message);
};
const step = (message) => console.log('map.mjs: ' + message);

// Waits for `check` (a function of the page) to return a truthy value.
async function until(page, what, timeoutMs, check, arg) {
  try {
    const handle = await page.waitForFunction(check, arg, { timeout: timeoutMs, polling: 250 });
    return await handle.jsonValue();
  } catch (e) {
    fail(what + ' (waited ' + timeoutMs / 1000 + ' s): ' + e.message.split('\n')[0]);
  }
}

// Every request a page makes, and its console errors.
function watch(page, name, problems, requests) {
  page.on('request', (r) => {
    const url = new URL(r.url());
    requests.push(url);
    if (url.origin !== origin && !url.protocol.startsWith('data')) {
      problems.push(name + ': a request to another origin: ' + r.url());
    }
  });
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(name + ': console error: ' + m.text());
  });
  page.on('pageerror', (e) => problems.push(name + ': uncaught: ' + e.message));
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const problems = [];
let code = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });

  // --- the fleet view --------------------------------------------------
  const page = await context.newPage();
  watch(page, 'fleet page', problems, []);
  await page.goto(fleetUrl);
  const n = await until(page, 'no vehicle was drawn', 60_000,
    () => document.querySelectorAll('#vehicles [data-vehicle]').length);
  step(n + ' vehicles drawn');
  const fences = await until(page, 'no fence was drawn', 10_000,
    () => document.querySelectorAll('#fences .fence').length);
  step(fences + ' fences drawn');

  // Each vehicle has a state, and the colour the legend gives that state.
  const colours = await page.evaluate((states) => {
    const legend = {};
    for (const s of states) {
      legend[s] = getComputedStyle(document.querySelector('#legend [data-legend="' + s + '"] circle')).fill;
    }
    const vehicles = [...document.querySelectorAll('#vehicles [data-vehicle]')].map((g) => ({
      id: g.dataset.vehicle,
      state: g.dataset.state,
      fill: getComputedStyle(g.querySelector('circle')).fill,
    }));
    return { legend, vehicles };
  }, STATES);
  if (new Set(Object.values(colours.legend)).size !== STATES.length) {
    fail('the legend does not give each state its own colour: ' + JSON.stringify(colours.legend));
  }
  for (const v of colours.vehicles) {
    if (!STATES.includes(v.state)) fail('vehicle ' + v.id + ' has no valid data-state: ' + v.state);
    if (v.fill !== colours.legend[v.state]) {
      fail('vehicle ' + v.id + ' is ' + v.state + ' but drawn ' + v.fill + ', the legend says ' + colours.legend[v.state]);
    }
  }
  const counted = await page.evaluate(() => document.querySelector('#count').dataset.count);
  if (Number(counted) < n) fail('the count says ' + counted + ' with ' + n + ' vehicles drawn');

  // Vehicles move: a moving one's position differs between two reads.
  // (The vans leave their depots 30 s to 2 min after the start.)
  await until(page, 'no vehicle became moving', 240_000,
    () => document.querySelector('#vehicles [data-state="moving"]') !== null);
  const positions = () => page.evaluate(() => Object.fromEntries(
    [...document.querySelectorAll('#vehicles [data-vehicle]')].map((g) => [g.dataset.vehicle, g.getAttribute('transform')])));
  const before = await positions();
  let after = before;
  let moved = [];
  for (let waited = 0; moved.length === 0 && waited < 20_000; waited += 1000) {
    await page.waitForTimeout(1000);
    after = await positions();
    moved = Object.keys(before).filter((id) => after[id] !== undefined && after[id] !== before[id]);
  }
  if (moved.length === 0) fail('no vehicle moved in 20 s: ' + JSON.stringify(after));
  step(moved.length + ' vehicles moved: ' + moved.join(', '));

  // An arrival reaches the ticker: the vans that stay at their depot for
  // a minute arrive there about a minute after the start; a page that
  // opened later waits for an arrival at a customer.
  await until(page, 'no vehicle.arrived event reached the ticker', 420_000,
    () => document.querySelector('#ticker [data-event-type="vehicle.arrived"]') !== null);
  const ticker = await page.evaluate(() => [...document.querySelectorAll('#ticker [data-event-type]')].map((li) => li.dataset.eventType));
  step('ticker: ' + ticker.join(', '));

  // A click on a moving vehicle: its last hour's track and events.
  const chosen = await page.evaluate(() => {
    const g = document.querySelector('#vehicles [data-state="moving"]') || document.querySelector('#vehicles [data-vehicle]');
    return g.dataset.vehicle;
  });
  await page.locator('#vehicles [data-vehicle="' + chosen + '"]').click({ force: true });
  const points = await until(page, 'clicking ' + chosen + ' drew no track of more than one point', 30_000,
    (id) => {
      const line = document.querySelector('#track polyline[data-vehicle="' + id + '"]');
      const n = line ? line.getAttribute('points').trim().split(/\s+/).length : 0;
      return n > 1 && !document.querySelector('#panel').hidden ? n : 0;
    }, chosen);
  step('track of ' + chosen + ': ' + points + ' points');
  const title = await page.textContent('#panel-title');
  if (title !== chosen) fail('the panel is titled ' + title + ', not ' + chosen);
  await until(page, 'the panel shows no events of ' + chosen, 15_000,
    () => document.querySelectorAll('#panel-events li').length > 0);
  if (screenshot) {
    await page.screenshot({ path: screenshot });
    step('screenshot: ' + screenshot);
  }

  // --- the share link's view --------------------------------------------
  const sharePage = await context.newPage();
  const shareRequests = [];
  watch(sharePage, 'share page', problems, shareRequests);
  await sharePage.goto(shareUrl);
  await until(sharePage, 'the share page drew no vehicle', 90_000,
    () => document.querySelectorAll('#vehicles [data-vehicle]').length > 0);
  // Some more positions and events come in before counting.
  await sharePage.waitForTimeout(5000);
  const shown = await sharePage.evaluate(() => [...document.querySelectorAll('#vehicles [data-vehicle]')].map((g) => g.dataset.vehicle));
  if (shown.length !== 1 || shown[0] !== sharedVehicle) {
    fail('the share page shows ' + JSON.stringify(shown) + ', not exactly [' + JSON.stringify(sharedVehicle) + ']');
  }
  await until(sharePage, 'the share page shows no track of ' + sharedVehicle, 30_000,
    (id) => document.querySelector('#track polyline[data-vehicle="' + id + '"]') !== null, sharedVehicle);
  const fleetParts = await sharePage.evaluate(() => ({
    ticker: getComputedStyle(document.querySelector('#ticker-wrap')).display,
    fences: document.querySelectorAll('#fences .fence').length,
  }));
  if (fleetParts.ticker !== 'none' || fleetParts.fences !== 0) {
    fail('the share page shows fleet parts: ' + JSON.stringify(fleetParts));
  }
  const asked = shareRequests.map((u) => u.pathname);
  const forbidden = asked.filter((p) => p === '/v1/fences' || p === '/v1/vehicles');
  if (forbidden.length) fail('the share page asked for what a share link may not read: ' + forbidden.join(', '));
  step('share page: ' + shown[0] + ' only; requests ' + [...new Set(asked)].join(', '));

  // --- a dropped feed is resumed, not refetched ----------------------------
  // The feed's socket goes through Playwright's WebSocket route (to the
  // real server), so the test can drop it and read what the page sends.
  const again = await context.newPage();
  const againRequests = [];
  watch(again, 'reconnecting page', problems, againRequests);
  const sockets = [];
  await again.routeWebSocket((url) => url.pathname === '/v1/feed', (route) => {
    const server = route.connectToServer();
    const socket = { route, sent: [], received: [], hold: false };
    sockets.push(socket);
    route.onMessage((m) => {
      socket.sent.push(JSON.parse(m));
      server.send(m);
    });
    server.onMessage((m) => {
      if (socket.hold) return;
      socket.received.push(JSON.parse(m));
      route.send(m);
    });
  });
  await again.goto(fleetUrl);
  await until(again, 'the reconnecting page drew no vehicle', 30_000,
    () => document.querySelectorAll('#vehicles [data-vehicle]').length > 0);
  await again.waitForTimeout(3000);
  const first = sockets[0];
  if (!first || first.received.length === 0) fail('the page\'s feed socket got nothing through the route');
  // Nothing more reaches the page, then the connection drops as at a
  // server restart.
  first.hold = true;
  await again.waitForTimeout(500);
  const lastResume = first.received[first.received.length - 1].resume;
  const restAtDrop = againRequests.filter((u) => u.pathname.startsWith('/v1/')).length;
  await first.route.close({ code: 1001, reason: 'shutdown' });
  const deadline = Date.now() + 30_000;
  while ((sockets.length < 2 || sockets[1].received.length === 0) && Date.now() < deadline) {
    await again.waitForTimeout(250);
  }
  if (sockets.length < 2) fail('the page did not reconnect the feed within 30 s');
  const resubscribe = sockets[1].sent[0];
  if (!resubscribe || resubscribe.type !== 'subscribe' || resubscribe.resume !== lastResume) {
    fail('the page reconnected with ' + JSON.stringify(resubscribe) + ', not a subscribe resuming from ' + lastResume);
  }
  if (!sockets[1].received.length || sockets[1].received[0].type !== 'resumed') {
    fail('the server did not resume the page: ' + JSON.stringify(sockets[1].received[0]));
  }
  await until(again, 'the page does not say it is live again', 10_000,
    () => document.querySelector('#status').dataset.status === 'live');
  const restAfter = againRequests.filter((u) => u.pathname.startsWith('/v1/')).length;
  if (restAfter !== restAtDrop) {
    fail('the reconnect fetched over REST: ' + againRequests.slice(restAtDrop).map((u) => u.pathname).join(', '));
  }
  step('reconnected with resume ' + lastResume + ' and was resumed; no REST request');
  await again.close();

  // --- a refused share link -----------------------------------------------
  // (Its 401s are console errors by design: this page is not watched.)
  const refused = await context.newPage();
  await refused.goto(new URL('/map#share=fps_not-a-real-link', origin).href);
  const message = await until(refused, 'a refused share link showed no message', 15_000, () => {
    const m = document.querySelector('#message');
    return m && !m.hidden ? m.textContent : '';
  });
  if (!/not valid/.test(message)) fail('a refused share link says: ' + message);
  step('refused share link: ' + message);

  if (problems.length) fail(problems.join('\n'));
  step('ok');
} catch (e) {
  code = 1;
  if (e instanceof Failure) {
    console.error('map.mjs: FAILED: ' + e.message);
    if (problems.length) console.error('map.mjs: also: ' + problems.join('\n'));
  } else {
    console.error('map.mjs: error: ' + (e && e.stack ? e.stack : e));
  }
} finally {
  await browser.close();
}
process.exit(code);
