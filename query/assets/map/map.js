// fleetpipe live map: plain JavaScript and SVG, no build step, nothing
// loaded from anywhere but this origin (the server's Content-Security-Policy
// enforces it).
//
// The token comes from the URL's fragment, which browsers never send:
//   /map#token=<api token>     the fleet view: fences, every vehicle the
//                              token sees, an event ticker;
//   /map#share=<fps_ token>    a share link's view: its one vehicle and its
//                              track, nothing of the fleet.
// Data: GET /v1/fences (fleet view only: a share link may not list fences),
// the live feed (GET /v1/feed, WebSocket; docs/feed.md) for positions and
// events, and on a click the vehicle's last hour (GET
// /v1/vehicles/{id}/track) and its recent events (GET /v1/events). The
// server's scopes decide what the page sees; the page draws what it is
// given and asks a share link only for what a share link may read.
//
// A dropped feed is reconnected with the last resume token (the server
// replays what was missed, or answers "gap" and a fresh snapshot); nothing
// is fetched again over REST on a reconnect.
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const W = 1000;
  const H = 700;
  const TICKER_MAX = 50;
  const PANEL_EVENTS_MAX = 30;
  const TRACK_MAX_POINTS = 1000;
  const TRACK_SPAN_MS = 3600 * 1000;
  const STATES = ['moving', 'parked', 'charging', 'offline'];

  const body = document.body;
  // The API's thresholds (api.offline_after, api.moving_speed_kmh), written
  // into the page by the server: the state is derived as
  // query/sql/state.sql derives it.
  const OFFLINE_AFTER_MS = Number(body.dataset.offlineAfterS) * 1000;
  const MOVING_KMH = Number(body.dataset.movingSpeedKmh);

  const $ = (id) => document.getElementById(id);
  const el = (name, attrs, parent) => {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  };
  const html = (name, text, parent) => {
    const node = document.createElement(name);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  };

  // --- credentials, from the fragment -----------------------------------
  const fragment = new URLSearchParams(location.hash.slice(1));
  const share = fragment.get('share');
  const token = share || fragment.get('token');
  const mode = share ? 'share' : 'fleet';

  // --- state ---------------------------------------------------------
  const vehicles = new Map(); // id -> {p: position, node, state}
  let fences = null; // GeoJSON features
  let bounds = null; // {minLon, minLat, maxLon, maxLat}
  let selected = null; // vehicle id
  let trackCoords = []; // [[lon, lat], ...] of the selected vehicle
  let resume = null;
  let snapshotIds = null; // ids of a snapshot being received
  let ws = null;
  let retries = 0;
  let fatal = false;

  // --- messages to the user --------------------------------------------
  function setStatus(kind, text) {
    const s = $('status');
    s.dataset.status = kind;
    s.textContent = text;
  }

  function showMessage(text) {
    const m = $('message');
    m.textContent = text;
    m.hidden = false;
  }

  function stop(text) {
    fatal = true;
    setStatus('error', 'stopped');
    showMessage(text);
    if (ws) ws.close(1000, 'client');
  }

  // --- REST ------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path) {
    const response = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) {
        // Not JSON: keep the status text.
      }
      throw new HttpError(response.status, detail);
    }
    return response.json();
  }

  // What to tell the user when the API refused; a network failure is
  // passed on.
  function refused(err, what) {
    if (!(err instanceof HttpError)) throw err;
    if (err.status === 401) {
      stop(mode === 'share'
        ? 'This tracking link is not valid: it is wrong, has expired or was revoked.'
        : 'The token was refused (401): check the token in the address after #token=.');
    } else if (err.status === 403) {
      stop('This token may not read ' + what + ' (403).');
    } else if (err.status === 404) {
      showMessage('Not found: ' + what + ' is not visible with this token.');
    } else {
      showMessage('The server could not answer for ' + what + ' (' + err.status + '): ' + err.message);
    }
  }

  // --- projection ------------------------------------------------------
  // Equirectangular around the bounds' middle latitude (a city is small
  // enough), fitted into the view box with a margin; y grows southwards.
  let proj = null;

  function fit() {
    if (!bounds) return;
    let { minLon, minLat, maxLon, maxLat } = bounds;
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    // At least ~1 km across, so one vehicle is not a whole screen.
    const minSpan = 0.01;
    if (maxLat - minLat < minSpan) {
      const c = (minLat + maxLat) / 2;
      minLat = c - minSpan / 2;
      maxLat = c + minSpan / 2;
    }
    if ((maxLon - minLon) * k < minSpan) {
      const c = (minLon + maxLon) / 2;
      minLon = c - minSpan / k / 2;
      maxLon = c + minSpan / k / 2;
    }
    const margin = 30;
    const sx = (W - 2 * margin) / ((maxLon - minLon) * k);
    const sy = (H - 2 * margin) / (maxLat - minLat);
    const s = Math.min(sx, sy);
    const ox = (W - (maxLon - minLon) * k * s) / 2;
    const oy = (H - (maxLat - minLat) * s) / 2;
    proj = {
      k, s, minLon, maxLat,
      x: (lon) => ox + (lon - minLon) * k * s,
      y: (lat) => oy + (maxLat - lat) * s,
      lon: (x) => minLon + (x - ox) / (k * s),
      lat: (y) => maxLat - (y - oy) / s,
    };
  }

  function extend(lon, lat) {
    if (!Number.isFinite(lon) || !Number.isFinite(lat)) return false;
    if (!bounds) {
      bounds = { minLon: lon, minLat: lat, maxLon: lon, maxLat: lat };
      return true;
    }
    if (lon >= bounds.minLon && lon <= bounds.maxLon && lat >= bounds.minLat && lat <= bounds.maxLat) {
      return false;
    }
    bounds.minLon = Math.min(bounds.minLon, lon);
    bounds.maxLon = Math.max(bounds.maxLon, lon);
    bounds.minLat = Math.min(bounds.minLat, lat);
    bounds.maxLat = Math.max(bounds.maxLat, lat);
    return true;
  }

  // Widens the bounds (with some room, so a vehicle driving out does not
  // refit on every ping) and redraws everything.
  function include(lon, lat) {
    const before = bounds && { ...bounds };
    if (!extend(lon, lat)) return;
    if (before) {
      const padLon = (bounds.maxLon - bounds.minLon) * 0.1;
      const padLat = (bounds.maxLat - bounds.minLat) * 0.1;
      if (bounds.minLon < before.minLon) bounds.minLon -= padLon;
      if (bounds.maxLon > before.maxLon) bounds.maxLon += padLon;
      if (bounds.minLat < before.minLat) bounds.minLat -= padLat;
      if (bounds.maxLat > before.maxLat) bounds.maxLat += padLat;
    }
    redraw();
  }

  function redraw() {
    fit();
    drawGrid();
    drawFences();
    for (const v of vehicles.values()) placeVehicle(v);
    drawTrack();
  }

  // --- background: a graticule and a scale bar, no streets -------------
  // A round step (1, 2 or 5 times a power of ten) near span / parts.
  function niceStep(span, parts) {
    const raw = span / parts;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }

  function drawGrid() {
    const g = $('grid');
    g.replaceChildren();
    const sc = $('scale');
    sc.replaceChildren();
    if (!proj) return;
    const west = proj.lon(0);
    const east = proj.lon(W);
    const north = proj.lat(0);
    const south = proj.lat(H);
    const step = niceStep(Math.max(east - west, north - south), 12);
    for (let lon = Math.ceil(west / step) * step; lon <= east; lon += step) {
      const x = proj.x(lon);
      el('line', { x1: x, y1: 0, x2: x, y2: H }, g);
    }
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      const y = proj.y(lat);
      el('line', { x1: 0, y1: y, x2: W, y2: y }, g);
    }
    // Scale bar: a round number of metres near 1/6 of the width.
    const metresPerUnit = 111320 / proj.s; // per view-box unit (k cancels)
    const metres = niceStep(W * metresPerUnit, 6);
    const len = metres / metresPerUnit;
    const x0 = W - 30 - len;
    const y0 = H - 20;
    el('line', { x1: x0, y1: y0, x2: x0 + len, y2: y0 }, sc);
    const label = el('text', { x: x0, y: y0 - 5 }, sc);
    label.textContent = metres >= 1000 ? metres / 1000 + ' km' : metres + ' m';
  }

  // --- fences ------------------------------------------------------------
  function ringPath(ring) {
    return ring.map(([lon, lat], i) => (i ? 'L' : 'M') + proj.x(lon).toFixed(1) + ' ' + proj.y(lat).toFixed(1)).join(' ') + ' Z';
  }

  function drawFences() {
    const g = $('fences');
    g.replaceChildren();
    if (!fences || !proj) return;
    for (const f of fences) {
      const geom = f.geometry;
      const props = f.properties || {};
      if (!geom) continue;
      let node = null;
      if (geom.type === 'Polygon') {
        node = el('path', { d: geom.coordinates.map(ringPath).join(' ') }, g);
      } else if (geom.type === 'MultiPolygon') {
        node = el('path', { d: geom.coordinates.map((p) => p.map(ringPath).join(' ')).join(' ') }, g);
      } else if (geom.type === 'Point' && Number.isFinite(props.radius_m)) {
        const [lon, lat] = geom.coordinates;
        node = el('circle', {
          cx: proj.x(lon).toFixed(1),
          cy: proj.y(lat).toFixed(1),
          r: Math.max(2, (props.radius_m / 111320) * proj.s).toFixed(1),
        }, g);
      }
      if (!node) continue;
      node.setAttribute('class', 'fence');
      node.setAttribute('data-fence', String(f.id !== undefined ? f.id : props.id));
      if (props.kind) node.setAttribute('data-kind', props.kind);
      const title = el('title', {}, node);
      const occupants = typeof props.occupancy === 'number' ? props.occupancy : 0;
      title.textContent = (props.name || f.id || '') + (props.kind ? ' (' + props.kind + ')' : '') +
        (occupants ? ' · ' + occupants + ' inside' : '');
    }
  }

  function fenceBounds(features) {
    const visit = (c) => {
      if (typeof c[0] === 'number') extend(c[0], c[1]);
      else for (const inner of c) visit(inner);
    };
    for (const f of features) if (f.geometry) visit(f.geometry.coordinates);
  }

  // --- vehicles ----------------------------------------------------------
  function stateOf(p, now) {
    const ts = Date.parse(p.ts);
    if (!Number.isFinite(ts) || now - ts > OFFLINE_AFTER_MS) return 'offline';
    if (p.charging === true) return 'charging';
    if (typeof p.speed_kmh === 'number' && p.speed_kmh >= MOVING_KMH) return 'moving';
    return 'parked';
  }

  function makeVehicle(id) {
    const node = el('g', { class: 'vehicle', 'data-vehicle': id, tabindex: 0, role: 'button' });
    el('path', { d: 'M0 -13 L4 -7.5 L-4 -7.5 Z' }, node);
    el('circle', { r: 7 }, node);
    el('title', {}, node);
    node.addEventListener('click', () => select(id));
    node.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') select(id);
    });
    $('vehicles').appendChild(node);
    const v = { id, node, p: null, state: null };
    vehicles.set(id, v);
    return v;
  }

  function placeVehicle(v) {
    if (!proj || !v.p) return;
    const x = proj.x(v.p.lon).toFixed(1);
    const y = proj.y(v.p.lat).toFixed(1);
    const heading = Number.isFinite(v.p.heading_deg) ? v.p.heading_deg : null;
    v.node.setAttribute('transform', 'translate(' + x + ' ' + y + ')');
    const arrow = v.node.querySelector('path');
    if (heading === null || v.state !== 'moving') {
      arrow.setAttribute('visibility', 'hidden');
    } else {
      arrow.setAttribute('visibility', 'visible');
      arrow.setAttribute('transform', 'rotate(' + heading.toFixed(0) + ')');
    }
  }

  function setState(v, state) {
    if (v.state === state) return;
    v.state = state;
    v.node.setAttribute('data-state', state);
    v.node.querySelector('circle').setAttribute('class', 'state-' + state);
  }

  function updateVehicle(p) {
    if (!p || typeof p.vehicle_id !== 'string') return;
    if (!Number.isFinite(p.lat) || !Number.isFinite(p.lon)) return;
    const v = vehicles.get(p.vehicle_id) || makeVehicle(p.vehicle_id);
    // Positions may arrive out of device-time order (a replay): keep the
    // newest.
    if (v.p && Date.parse(v.p.ts) > Date.parse(p.ts)) return;
    v.p = p;
    setState(v, stateOf(p, Date.now()));
    v.node.querySelector('title').textContent = p.vehicle_id + ' · ' + v.state +
      (typeof p.speed_kmh === 'number' ? ' · ' + p.speed_kmh.toFixed(0) + ' km/h' : '');
    include(p.lon, p.lat);
    placeVehicle(v);
    if (selected === p.vehicle_id) {
      extendTrack(p);
      showFacts(v);
    }
  }

  function removeVehicle(id) {
    const v = vehicles.get(id);
    if (!v) return;
    v.node.remove();
    vehicles.delete(id);
  }

  function refreshStates() {
    const now = Date.now();
    for (const v of vehicles.values()) {
      if (v.p) {
        setState(v, stateOf(v.p, now));
        placeVehicle(v);
      }
    }
    count();
  }

  let countPending = false;
  function countSoon() {
    if (countPending) return;
    countPending = true;
    setTimeout(() => {
      countPending = false;
      count();
    }, 250);
  }

  function count() {
    const n = { moving: 0, parked: 0, charging: 0, offline: 0 };
    for (const v of vehicles.values()) if (v.state) n[v.state] += 1;
    for (const s of STATES) {
      document.querySelector('#legend [data-legend="' + s + '"] .n').textContent = String(n[s]);
    }
    const c = $('count');
    c.dataset.count = String(vehicles.size);
    c.textContent = vehicles.size === 1 ? '1 vehicle' : vehicles.size + ' vehicles';
  }

  // --- the selected vehicle: facts, last hour's track, recent events ----
  function showFacts(v) {
    const dl = $('panel-facts');
    dl.replaceChildren();
    const p = v.p;
    if (!p) return;
    const rows = [
      ['state', v.state],
      ['seen', new Date(p.ts).toLocaleTimeString()],
      ['speed', typeof p.speed_kmh === 'number' ? p.speed_kmh.toFixed(0) + ' km/h' : '–'],
      ['battery', typeof p.soc_pct === 'number' ? p.soc_pct.toFixed(0) + ' %' + (p.charging ? ' (charging)' : '') : '–'],
      ['fences', Array.isArray(p.fences) && p.fences.length ? p.fences.join(', ') : '–'],
    ];
    for (const [k, value] of rows) {
      html('dt', k, dl);
      html('dd', value, dl);
    }
  }

  function drawTrack() {
    const g = $('track');
    g.replaceChildren();
    if (!proj || !selected || trackCoords.length === 0) return;
    el('polyline', {
      'data-vehicle': selected,
      'data-points': trackCoords.length,
      points: trackCoords.map(([lon, lat]) => proj.x(lon).toFixed(1) + ',' + proj.y(lat).toFixed(1)).join(' '),
    }, g);
  }

  function extendTrack(p) {
    const last = trackCoords[trackCoords.length - 1];
    if (last && last[0] === p.lon && last[1] === p.lat) return;
    trackCoords.push([p.lon, p.lat]);
    drawTrack();
    $('panel-track').textContent = trackCoords.length + ' points';
  }

  function eventItem(e, list, max) {
    const li = document.createElement('li');
    li.setAttribute('data-event-type', e.type);
    li.setAttribute('data-vehicle', e.vehicle_id);
    const t = html('time', new Date(e.time).toLocaleTimeString(), li);
    t.dateTime = e.time;
    const type = html('span', e.type, li);
    type.className = 'etype';
    type.dataset.kind = e.type.includes('arrived') ? 'arrived' : e.type.split('.')[0] === 'vehicle' && e.type.includes('overspeed') ? 'overspeed' : e.type.split('.')[0];
    const fence = e.data && typeof e.data.fence_id === 'string' ? ' · ' + e.data.fence_id : '';
    html('span', ' ' + e.vehicle_id + fence, li);
    list.prepend(li);
    while (list.children.length > max) list.lastElementChild.remove();
    return li;
  }

  // The last PANEL_EVENTS_MAX events of a list the API pages oldest first:
  // its pages (at the server's default size) up to a bound.
  async function recentEvents(path) {
    let kept = [];
    let cursor = null;
    for (let page = 0; page < 20; page += 1) {
      const answer = await api(path + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
      kept = kept.concat(answer.events || []).slice(-PANEL_EVENTS_MAX);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return kept;
  }

  async function select(id) {
    if (selected === id && !$('panel').hidden) return;
    for (const v of vehicles.values()) v.node.classList.toggle('selected', v.id === id);
    selected = id;
    trackCoords = [];
    drawTrack();
    $('panel').hidden = false;
    $('panel-title').textContent = id;
    $('panel-track').textContent = 'loading…';
    const events = $('panel-events');
    events.replaceChildren();
    const v = vehicles.get(id);
    if (v) showFacts(v);
    const to = new Date();
    const from = new Date(to.getTime() - TRACK_SPAN_MS);
    const range = 'from=' + encodeURIComponent(from.toISOString()) + '&to=' + encodeURIComponent(to.toISOString());
    const vid = encodeURIComponent(id);
    try {
      const [track, list] = await Promise.all([
        api('/v1/vehicles/' + vid + '/track?' + range + '&max_points=' + TRACK_MAX_POINTS),
        recentEvents('/v1/events?vehicle_id=' + vid + '&' + range),
      ]);
      if (selected !== id) return;
      const geom = track.geometry;
      const live = trackCoords; // positions that came in meanwhile
      trackCoords = !geom ? [] : geom.type === 'LineString' ? geom.coordinates.slice() : [geom.coordinates];
      const times = track.properties && Array.isArray(track.properties.times) ? track.properties.times : [];
      const lastTs = times.length ? Date.parse(times[times.length - 1]) : 0;
      for (const c of live) trackCoords.push(c);
      if (v && v.p && Date.parse(v.p.ts) > lastTs) extendTrack(v.p);
      for (const [lon, lat] of trackCoords) extend(lon, lat);
      redraw();
      $('panel-track').textContent = trackCoords.length
        ? trackCoords.length + ' points (' + (track.properties ? track.properties.points_read : '?') + ' pings)'
        : 'no pings in the last hour';
      // Oldest first from the API; the panel shows the newest on top.
      for (const e of list.slice(-PANEL_EVENTS_MAX)) eventItem(e, events, PANEL_EVENTS_MAX);
      if (!list.length) html('li', 'none in the last hour', events).className = 'empty';
    } catch (err) {
      if (selected !== id) return;
      $('panel-track').textContent = 'unavailable';
      refused(err, 'vehicle ' + id);
    }
  }

  function deselect() {
    if (mode === 'share') return;
    selected = null;
    trackCoords = [];
    drawTrack();
    $('panel').hidden = true;
    for (const v of vehicles.values()) v.node.classList.remove('selected');
  }

  // --- events --------------------------------------------------------------
  function onEvent(e) {
    if (!e || typeof e.type !== 'string' || typeof e.vehicle_id !== 'string') return;
    if (mode === 'fleet') {
      const li = eventItem(e, $('ticker'), TICKER_MAX);
      li.addEventListener('click', () => select(e.vehicle_id));
    }
    if (selected === e.vehicle_id && !$('panel').hidden) {
      const empty = $('panel-events').querySelector('.empty');
      if (empty) empty.remove();
      eventItem(e, $('panel-events'), PANEL_EVENTS_MAX);
    }
    // A share view learns its vehicle from what the feed sends.
    if (mode === 'share' && !selected) select(e.vehicle_id);
  }

  // --- the live feed -------------------------------------------------------
  function onMessage(m) {
    if (m.resume) resume = m.resume;
    switch (m.type) {
      case 'snapshot':
        if (!snapshotIds) snapshotIds = new Set();
        for (const p of m.positions || []) {
          snapshotIds.add(p.vehicle_id);
          updateVehicle(p);
        }
        if (!m.more) {
          // What the snapshot does not hold is gone from the view (a gap,
          // a new subscription).
          for (const id of [...vehicles.keys()]) if (!snapshotIds.has(id)) removeVehicle(id);
          snapshotIds = null;
          count();
          if (mode === 'share' && !selected && vehicles.size) select(vehicles.keys().next().value);
        }
        break;
      case 'position':
        updateVehicle(m);
        countSoon();
        if (mode === 'share' && !selected) select(m.vehicle_id);
        break;
      case 'event':
        onEvent(m.event);
        break;
      case 'resumed':
        break;
      case 'gap':
        // A fresh snapshot follows.
        snapshotIds = null;
        break;
      case 'error':
        showMessage('The feed refused the subscription: ' + (m.detail || m.error));
        break;
      case 'close':
      case 'overflow':
        if (m.reason === 'expired' || m.reason === 'revoked') {
          stop(m.reason === 'expired' ? 'This tracking link has expired.' : 'This tracking link was revoked.');
        }
        break;
      default:
        break;
    }
  }

  function subscribe() {
    const message = { type: 'subscribe', positions: true, events: true };
    if (resume) message.resume = resume;
    ws.send(JSON.stringify(message));
  }

  function connect() {
    if (fatal) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // A browser's WebSocket cannot set headers: the token goes in the
    // subprotocol list (docs/feed.md), never in the URL.
    const socket = new WebSocket(scheme + '//' + location.host + '/v1/feed', ['fleetpipe.feed.v1', 'bearer.' + token]);
    ws = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      retries = 0;
      setStatus('live', 'live');
      subscribe();
    };
    socket.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      onMessage(m);
    };
    socket.onclose = (e) => {
      if (ws !== socket) return;
      ws = null;
      snapshotIds = null;
      if (fatal) return;
      if (e.code === 4401) return stop('This tracking link has expired.');
      if (e.code === 4403) return stop('This tracking link was revoked.');
      if (!opened && retries >= 2) {
        // Refused before the upgrade several times: ask the API why once
        // (a 401 says the token is no longer valid).
        probe();
      }
      // Backoff with jitter, up to 15 s: every page of a restarted server
      // does not come back at once.
      const delay = Math.min(15000, 1000 * Math.pow(2, retries)) * (0.5 + Math.random() / 2);
      retries += 1;
      setStatus('reconnecting', 'reconnecting…');
      setTimeout(connect, delay);
    };
  }

  // One cheap request whose answer tells whether the token still counts.
  function probe() {
    api('/v1/events?limit=1').catch((err) => {
      if (err instanceof HttpError && err.status === 401) refused(err, 'events');
    });
  }

  // --- start ---------------------------------------------------------------
  async function start() {
    $('panel-close').addEventListener('click', deselect);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') deselect();
    });
    if (!token) {
      setStatus('error', 'no token');
      showMessage('Open this page with a token: /map#token=<API token> for the fleet, or a tracking link /map#share=<share token>.');
      return;
    }
    if (mode === 'share') {
      body.classList.add('share');
      $('mode').textContent = 'tracking';
      $('panel').hidden = false;
      $('panel-title').textContent = 'waiting for the vehicle…';
      // The share link's own events: checks the link (401 when it is not
      // valid) and may already name the vehicle.
      try {
        const recent = await api('/v1/events?limit=1');
        if (recent.events && recent.events.length && !selected) select(recent.events[0].vehicle_id);
      } catch (err) {
        refused(err, 'this link');
        return;
      }
    } else {
      try {
        const collection = await api('/v1/fences');
        fences = collection.features || [];
        fenceBounds(fences);
        redraw();
      } catch (err) {
        refused(err, 'the fences');
        if (fatal) return;
      }
    }
    connect();
    // Vehicles go offline without a message: re-derive states as time passes.
    setInterval(refreshStates, 5000);
  }

  start().catch((err) => {
    setStatus('error', 'error');
    showMessage('The map could not start: ' + err.message);
  });
})();
