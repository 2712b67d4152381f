// The wsroom console: the project list and charts (/console), and one
// project's clients, live feed and test form (/console?projectId=P).
// Everything shown comes from the server's own endpoints: the projects
// from /console/api/projects, clients from /status, the feed from an admin
// WebSocket, the charts from /health. Data from the network is only ever
// put in the page as text (textContent), never as HTML.
'use strict';

const TOKEN_KEY = 'wsroom-token';
const POLL_MS = 2000;
const CLIENTS_POLL_MS = 1000;
const CHART_POINTS = 150; // five minutes at POLL_MS
const FEED_KEEP = 500;
const CHART_COLORS = ['#2f7de1', '#e0803a'];
const FEED_WAITING_MAX = 2000;

const $ = (id) => document.getElementById(id);

// ---- the token and requests ----------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

class AuthError extends Error {}

async function api(path) {
  const headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();
  const response = await fetch(path, { headers, cache: 'no-store' });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // Not JSON: the status says enough.
  }
  const message = (body && body.message) || response.status + ' ' + response.statusText;
  if (response.status === 401 || response.status === 403) throw new AuthError(message);
  if (!response.ok) throw new Error(message);
  return body;
}

// Whatever must stop when the server refuses the token (the feed).
const onRefused = [];

// Shows the token form (hiding every project's data) after a refusal.
function askForToken(message) {
  onRefused.splice(0).forEach((stop) => stop());
  $('overview').hidden = true;
  $('project').hidden = true;
  clearChildren($('projects').tBodies[0]);
  clearChildren($('clients').tBodies[0]);
  clearChildren($('feed'));
  $('token-panel').hidden = false;
  $('token-error').textContent = token() ? message : '';
}

function setUpToken() {
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
    location.reload();
  });
  const forget = $('forget-token');
  forget.hidden = !token();
  forget.addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
}

// ---- small helpers ---------------------------------------------------------

function clearChildren(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function rate(n) {
  if (n >= 1000) return (n / 1000).toFixed(1) + 'k';
  return n >= 10 ? n.toFixed(0) : n.toFixed(1);
}

function uuid() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  // Not a secure context (plain http to a name other than localhost).
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
}

// Polls `step` every `ms`, one request at a time, stopping on a refusal.
function every(ms, step) {
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    try {
      await step();
    } catch (e) {
      if (e instanceof AuthError) {
        stopped = true;
        askForToken(e.message);
        return;
      }
    }
    setTimeout(run, ms);
  };
  run();
}

// ---- the overview: charts and the project list ---------------------------

// A small line chart on a canvas: one or two series over the last minutes.
class Chart {
  constructor(parent, title, series, unit) {
    this.series = series.map((name) => ({ name, points: [] }));
    this.unit = unit;
    const box = document.createElement('figure');
    box.className = 'chart';
    const caption = document.createElement('figcaption');
    this.label = document.createElement('span');
    caption.textContent = title + ' ';
    caption.appendChild(this.label);
    this.canvas = document.createElement('canvas');
    this.canvas.width = 320;
    this.canvas.height = 90;
    box.appendChild(caption);
    box.appendChild(this.canvas);
    parent.appendChild(box);
  }

  push(values) {
    values.forEach((v, i) => {
      const points = this.series[i].points;
      points.push(v);
      if (points.length > CHART_POINTS) points.shift();
    });
    clearChildren(this.label);
    this.series.forEach((s, i) => {
      const part = document.createElement('span');
      part.style.color = CHART_COLORS[i];
      part.textContent = (i > 0 ? ' · ' : '') + (this.series.length > 1 ? s.name + ' ' : '') + format(values[i], this.unit);
      this.label.appendChild(part);
    });
    this.draw();
  }

  // The newest point at the right edge, the scale from zero to a little
  // over the largest point shown, which is written in the corner.
  draw() {
    const c = this.canvas.getContext('2d');
    const { width, height } = this.canvas;
    c.clearRect(0, 0, width, height);
    let max = 0;
    for (const s of this.series) for (const v of s.points) if (v != null && v > max) max = v;
    const top = max > 0 ? max * 1.15 : 1;
    c.fillStyle = getComputedStyle(document.body).getPropertyValue('--muted') || '#888';
    c.font = '10px system-ui, sans-serif';
    c.fillText('max ' + format(max, this.unit), 2, 10);
    c.strokeStyle = c.fillStyle;
    c.globalAlpha = 0.3;
    c.beginPath();
    c.moveTo(0, height - 1.5);
    c.lineTo(width, height - 1.5);
    c.stroke();
    c.globalAlpha = 1;
    this.series.forEach((s, i) => {
      c.strokeStyle = CHART_COLORS[i];
      c.lineWidth = 1.5;
      c.beginPath();
      let started = false;
      const offset = CHART_POINTS - s.points.length;
      s.points.forEach((v, x) => {
        if (v == null) return;
        const px = ((offset + x) / (CHART_POINTS - 1)) * width;
        const py = height - 2 - (v / top) * (height - 4);
        if (started) c.lineTo(px, py);
        else c.moveTo(px, py);
        started = true;
      });
      c.stroke();
    });
  }
}

function format(v, unit) {
  if (v == null) return '–';
  if (unit === 'ms') return v.toFixed(v < 1 ? 3 : 1) + ' ms';
  if (unit === '/s') return rate(v) + '/s';
  return String(Math.round(v));
}

function startCharts() {
  const parent = $('charts');
  const charts = {
    connections: new Chart(parent, 'connections', ['open'], ''),
    messages: new Chart(parent, 'messages in', ['rate'], '/s'),
    deliveries: new Chart(parent, 'frames out', ['rate'], '/s'),
    rooms: new Chart(parent, 'rooms', ['live', 'hibernated'], ''),
    latency: new Chart(parent, 'room call, mean', ['mean'], 'ms'),
  };
  let last = null;
  every(POLL_MS, async () => {
    const h = await api('/health');
    const now = performance.now();
    const counters = h.counters || {};
    const call = (h.latencyMs && h.latencyMs.roomCall) || {};
    const sample = {
      now,
      messages: counters.messagesIn || 0,
      frames: counters.framesOut || 0,
      callCount: call.count || 0,
      callTotal: (call.mean || 0) * (call.count || 0),
    };
    $('server-state').textContent =
      'v' + h.version + ' · up ' + duration(h.uptimeMs) + (h.ready ? '' : ' · not ready: ' + (h.atLimits || []).join(', '));
    charts.connections.push([h.connections]);
    const live = counters.instancesLive || 0;
    charts.rooms.push([live, Math.max(0, (counters.roomsLive || 0) - live)]);
    if (last) {
      const secs = (now - last.now) / 1000;
      charts.messages.push([Math.max(0, sample.messages - last.messages) / secs]);
      charts.deliveries.push([Math.max(0, sample.frames - last.frames) / secs]);
      const calls = sample.callCount - last.callCount;
      charts.latency.push([calls > 0 ? (sample.callTotal - last.callTotal) / calls : null]);
    }
    last = sample;
  });
}

function startProjectList() {
  const tbody = $('projects').tBodies[0];
  let cursors = ['']; // the cursor of each page seen, for Previous
  let page = 0;
  let next = null;
  const previous = new Map(); // projectId -> { messages, at }
  let asked = 0; // requests made; only the latest one's answer is shown
  const refresh = async () => {
    const query = new URLSearchParams({ q: $('search').value, limit: '50' });
    if (cursors[page]) query.set('cursor', cursors[page]);
    const mine = ++asked;
    let list;
    try {
      list = await api('/console/api/projects?' + query);
    } catch (e) {
      if (mine !== asked) return;
      if (!(e instanceof AuthError)) $('projects-error').textContent = e.message;
      throw e;
    }
    if (mine !== asked) return; // a newer request (search, paging) was made
    $('projects-error').textContent = '';
    $('overview').hidden = false;
    $('token-panel').hidden = true;
    if (list.node) $('node').textContent = 'node ' + list.node + ' (its projects)';
    $('project-total').textContent = '(' + list.total + ' live)';
    next = list.nextCursor;
    $('next-page').disabled = !next;
    $('prev-page').disabled = page === 0;
    clearChildren(tbody);
    const now = performance.now();
    for (const p of list.projects) {
      const row = tbody.insertRow();
      row.dataset.projectId = p.projectId;
      const link = document.createElement('a');
      link.href = '/console?projectId=' + encodeURIComponent(p.projectId);
      link.textContent = p.projectId;
      row.insertCell().appendChild(link);
      cell(row, String(p.clientCount), 'num');
      cell(
        row,
        Object.entries(p.clientsByType)
          .map(([type, n]) => type + ' ' + n)
          .join(', '),
      );
      // A rate over at least a second: a click can refresh sooner, and
      // then the last rate stays.
      const before = previous.get(p.projectId);
      let perSecond = before ? before.rate : null;
      if (!before || now - before.at >= 1000) {
        if (before) perSecond = Math.max(0, p.messages - before.messages) / ((now - before.at) / 1000);
        previous.set(p.projectId, { messages: p.messages, at: now, rate: perSecond });
      }
      cell(row, perSecond == null ? '–' : rate(perSecond), 'num');
      cell(row, p.hibernated ? 'hibernated' : 'live');
      cell(row, p.component);
    }
    if (previous.size > 5000) previous.clear();
    $('projects-empty').hidden = list.projects.length > 0;
  };
  $('search').addEventListener('input', () => {
    cursors = [''];
    page = 0;
    refresh().catch(() => {});
  });
  $('next-page').addEventListener('click', () => {
    if (!next) return;
    cursors = cursors.slice(0, page + 1);
    cursors.push(next);
    page += 1;
    refresh().catch(() => {});
  });
  $('prev-page').addEventListener('click', () => {
    if (page === 0) return;
    page -= 1;
    refresh().catch(() => {});
  });
  every(POLL_MS, refresh);
}

// ---- one project: clients, live feed, test form ----------------------------

function startProject(projectId) {
  $('project-id').textContent = projectId;
  document.title = projectId + ' · wsroom console';
  let myId = null;
  let shown = false;

  const clientsBody = $('clients').tBodies[0];
  // One /status request at a time: a burst of client_left asks once more.
  let inFlight = null;
  let again = false;
  const refreshClients = () => {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = loadClients().finally(() => {
      inFlight = null;
      if (again) {
        again = false;
        refreshClients().catch(() => {});
      }
    });
    return inFlight;
  };
  const loadClients = async () => {
    let status;
    try {
      status = await api('/status?projectId=' + encodeURIComponent(projectId));
    } catch (e) {
      if (!(e instanceof AuthError)) $('clients-error').textContent = e.message;
      throw e;
    }
    $('clients-error').textContent = '';
    if (!shown) {
      shown = true;
      $('project').hidden = false;
      $('token-panel').hidden = true;
      connectFeed();
    }
    $('client-count').textContent = '(' + status.clientCount + ')';
    clearChildren(clientsBody);
    for (const c of status.clients) {
      const row = clientsBody.insertRow();
      row.dataset.clientId = c.id;
      row.dataset.clientType = c.type;
      cell(row, c.id + (c.id === myId ? ' (this console)' : ''), 'mono');
      cell(row, c.type);
      cell(row, new Date(c.connectedAt).toLocaleTimeString() + ' (' + duration(c.connectedFor) + ')');
      const meta = c.metadata || {};
      const params = (meta.params || []).map(([k, v]) => k + '=' + v).join(' ');
      cell(row, [meta.subject, params].filter(Boolean).join(' · ') || '–');
      cell(row, meta.origin || '–');
      cell(row, meta.userAgent || '–', 'agent');
    }
  };
  every(CLIENTS_POLL_MS, refreshClients);

  // The feed: an admin WebSocket, reconnected with a growing delay.
  const feed = $('feed');
  const filter = $('feed-filter');
  const types = new Set();
  let paused = false;
  let waiting = [];
  let dropped = 0;
  let socket = null;
  let retryMs = 500;
  let stopped = false;
  let retry = null;
  onRefused.push(() => {
    stopped = true;
    clearTimeout(retry);
    if (socket) socket.close();
  });

  function feedState(text) {
    $('feed-state').textContent = text;
  }

  function connectFeed() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = scheme + '//' + location.host + '/websocket?type=admin&projectId=' + encodeURIComponent(projectId);
    // The token goes as a subprotocol beside "wsroom", never in the URL.
    const protocols = token() ? ['wsroom', 'bearer.' + token()] : ['wsroom'];
    if (stopped) return;
    feedState('(connecting)');
    try {
      socket = new WebSocket(url, protocols);
    } catch (e) {
      feedState('(cannot connect: ' + e.message + ')');
      return;
    }
    socket.onopen = () => {
      retryMs = 500;
      feedState('(live)');
    };
    socket.onmessage = (event) => received(event.data);
    socket.onclose = (event) => {
      myId = null;
      if (stopped) return;
      feedState('(disconnected' + (event.code ? ': ' + event.code + (event.reason ? ' ' + event.reason : '') : '') + '; reconnecting)');
      retry = setTimeout(connectFeed, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    };
  }

  function received(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (_) {
      message = { type: '(not JSON)', payload: String(data) };
    }
    if (typeof message !== 'object' || message === null) message = { payload: message };
    const from = (message.from && typeof message.from === 'object' && message.from) || {};
    if (message.type === 'connected' && from.type === 'system' && message.payload) {
      myId = message.payload.clientId;
    }
    if (message.type === 'client_left' || message.type === 'connected') {
      refreshClients().catch(() => {});
    }
    if (paused) {
      waiting.push(message);
      if (waiting.length > FEED_WAITING_MAX) {
        waiting.shift();
        dropped += 1;
      }
      $('feed-waiting').textContent = waiting.length + ' waiting' + (dropped ? ', ' + dropped + ' dropped' : '');
      return;
    }
    show(message);
  }

  function show(message) {
    const from = (message.from && typeof message.from === 'object' && message.from) || {};
    const fromType = typeof from.type === 'string' ? from.type : '?';
    if (!types.has(fromType)) {
      types.add(fromType);
      const option = document.createElement('option');
      option.value = fromType;
      option.textContent = fromType;
      filter.appendChild(option);
    }
    const item = document.createElement('li');
    item.dataset.fromType = fromType;
    item.dataset.messageType = typeof message.type === 'string' ? message.type : '';
    item.hidden = filter.value !== '' && filter.value !== fromType;
    const head = document.createElement('div');
    head.className = 'feed-head';
    const to = message.to && typeof message.to === 'object' ? message.to : null;
    const target = to ? (to.id ? 'client ' + to.id : to.type ? 'type ' + to.type : 'everyone') : 'everyone';
    head.textContent =
      new Date().toLocaleTimeString() + '  ' +
      fromType + (from.id ? ' ' + from.id : '') + ' → ' + target + '  ' +
      (typeof message.type === 'string' ? message.type : '');
    const body = document.createElement('pre');
    let payload = JSON.stringify(message.payload);
    if (payload === undefined) payload = '';
    body.textContent = payload.length > 2000 ? payload.slice(0, 2000) + '…' : payload;
    item.appendChild(head);
    item.appendChild(body);
    feed.insertBefore(item, feed.firstChild);
    while (feed.childElementCount > FEED_KEEP) feed.removeChild(feed.lastChild);
  }

  $('pause').addEventListener('click', () => {
    paused = !paused;
    $('pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused) {
      const backlog = waiting;
      waiting = [];
      dropped = 0;
      $('feed-waiting').textContent = '';
      backlog.forEach(show);
    }
  });
  filter.addEventListener('change', () => {
    for (const item of feed.children) {
      item.hidden = filter.value !== '' && filter.value !== item.dataset.fromType;
    }
  });
  $('clear-feed').addEventListener('click', () => clearChildren(feed));

  $('send-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const result = $('send-result');
    let payload;
    try {
      payload = JSON.parse($('payload').value || 'null');
    } catch (err) {
      result.textContent = 'the payload is not JSON: ' + err.message;
      result.className = 'error';
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      result.textContent = 'not connected to the project yet';
      result.className = 'error';
      return;
    }
    const message = { id: uuid(), type: $('message-type').value, payload };
    const kind = $('to-kind').value;
    const value = $('to-value').value.trim();
    if (kind && !value) {
      result.textContent = 'say which ' + (kind === 'id' ? 'client id' : 'type');
      result.className = 'error';
      return;
    }
    if (kind) message.to = { [kind]: value };
    socket.send(JSON.stringify(message));
    result.className = 'muted';
    result.textContent = 'sent ' + message.id + ' at ' + new Date().toLocaleTimeString() +
      ' (an error from the room would appear in the feed)';
  });
}

// ---- start -------------------------------------------------------------------

setUpToken();
const projectId = new URLSearchParams(location.search).get('projectId');
if (projectId) {
  startProject(projectId);
} else {
  startCharts();
  startProjectList();
}
