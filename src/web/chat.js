// switchboard web chat: a client of the wire contract v1 (proto/README.md), no build step.
//
// One WebSocket to /ws. The server sends `hello`, replays what this device has not
// acknowledged, then `synced`; after that, live frames. The page keeps per conversation
// the messages it has seen (keyed by seq, so replays and history pages deduplicate), the
// sends still waiting for their `ack` (keyed by cmid, resent with the same cmid after a
// reconnect or an `unavailable`), and the highest delivered/read marks of the other
// members (the ticks). Everything the page shows is built with textContent: message
// bodies are never parsed as HTML.
(() => {
  'use strict';

  const ID_PATTERN = /^[A-Za-z0-9_.@-]{1,64}$/;
  const SUBPROTOCOL = 'switchboard.v1.json';
  const HISTORY_PAGE = 50;
  const TYPING_THROTTLE_MS = 3000; // at most one `start` per 3 s while typing
  const TYPING_IDLE_MS = 4000; // `stop` after this long without a keystroke
  const TYPING_SHOW_MS = 6000; // an incoming `start` shows this long unless renewed
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  const SEND_RETRY_LIMIT = 8;
  const RETRYABLE = new Set(['unavailable', 'overloaded', 'rate_limited', 'internal']);
  const FRAME_LOG_LEN = 200;

  // ---------------------------------------------------------------- state

  const state = {
    auth: null, // {user, device} (dev mode) or {token}
    me: null,
    device: null,
    limits: {},
    socket: null,
    synced: false, // this connection has finished its resume
    everConnected: false, // a hello arrived since signing in
    stopped: true, // no automatic reconnect
    backoffMs: BACKOFF_MIN_MS,
    reconnectTimer: null,
    nextRef: 1,
    requests: new Map(), // ref -> {type, conv, cmid} for replies and errors
    convs: new Map(), // conv id -> Conversation
    open: null, // conv id on screen
    presence: new Map(), // user -> {status, last_seen}
    presenceWatched: new Set(), // users watched on this connection
    unsupported: new Set(), // request types this server answered "not supported"
    typing: { conv: null, sentAt: 0, idleTimer: null },
    frames: [],
  };

  /** A conversation as the page knows it. */
  function conversation(id) {
    let c = state.convs.get(id);
    if (!c) {
      const kind = id.slice(0, id.indexOf(':'));
      c = {
        id,
        kind, // dm | group | feed
        name: null, // groups
        members: null, // groups, from `group` replies
        latest: 0, // highest seq the server announced or we saw
        messages: new Map(), // seq -> msg frame
        pending: [], // sends without an ack: {cmid, body, ref, state, attempts, error, timer, ts}
        deliveredSent: 0,
        readSent: 0,
        deliveredWanted: 0,
        receiptTimer: null,
        peerDelivered: 0, // highest delivered mark of anyone but me
        peerRead: 0, // highest read mark of anyone but me
        historyLoaded: false, // the newest page was fetched
        loadingHistory: false,
        reachedStart: false,
        typingUsers: new Map(), // user -> timer
        subscribed: false, // feeds
        lastActivity: 0,
      };
      state.convs.set(id, c);
    }
    return c;
  }

  function dmId(a, b) {
    return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
  }

  function dmPeer(c) {
    if (c.kind !== 'dm') return null;
    const [, a, b] = c.id.split(':');
    return a === state.me ? b : a;
  }

  function title(c) {
    if (c.kind === 'dm') return dmPeer(c);
    if (c.kind === 'group') return c.name || c.id.slice('group:'.length);
    return `#${c.id.slice('feed:'.length)}`;
  }

  function maxSeq(c, filter) {
    let max = 0;
    for (const [seq, m] of c.messages) if (seq > max && (!filter || filter(m))) max = seq;
    return max;
  }

  function unreadCount(c) {
    let n = 0;
    for (const [seq, m] of c.messages) if (seq > c.readSent && m.from !== state.me && !m.system) n++;
    return n;
  }

  // ---------------------------------------------------------------- DOM helpers

  const $ = (selector) => document.querySelector(selector);
  const ui = {};

  /** Creates an element: el('li', {class: 'x', dataset: {seq: 1}}, child, 'text', ...). */
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function timeOf(ts) {
    const date = new Date(ts);
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function ago(ts) {
    const seconds = Math.max(0, Math.round((Date.now() - ts) / 1000));
    if (seconds < 60) return 'just now';
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `at ${timeOf(ts)}`;
    return `on ${new Date(ts).toLocaleDateString()}`;
  }

  function bodyText(body) {
    if (typeof body === 'string') return body;
    if (body && typeof body === 'object' && typeof body.text === 'string') return body.text;
    return null;
  }

  // Group membership changes are system messages: {event, by, name?, members}.
  function applySystem(c, body) {
    if (!body || typeof body !== 'object' || !Array.isArray(body.members)) return;
    const current = new Set(c.members || []);
    if (body.event === 'created') {
      if (typeof body.name === 'string') c.name = c.name || body.name;
      c.members = [...body.members];
    } else if (body.event === 'added') {
      body.members.forEach((member) => current.add(member));
      c.members = [...current].sort();
    } else if (body.event === 'removed') {
      body.members.forEach((member) => current.delete(member));
      c.members = [...current].sort();
    }
  }

  function describeSystem(body) {
    if (!body || typeof body !== 'object' || !Array.isArray(body.members)) return null;
    const who = body.members.join(', ');
    if (body.event === 'created') return `${body.by} created “${body.name}” with ${who}`;
    if (body.event === 'added') return `${body.by} added ${who}`;
    if (body.event === 'removed') return body.members.length === 1 && body.members[0] === body.by
      ? `${body.by} left` : `${body.by} removed ${who}`;
    return null;
  }

  function preview(m) {
    if (m.system) {
      const text = describeSystem(m.body);
      if (text !== null) return text;
    }
    const text = bodyText(m.body);
    return text !== null ? text : JSON.stringify(m.body);
  }

  /** A short notice in the corner that goes away by itself. */
  function toast(message, level = 'error') {
    const item = el('li', { class: 'toast', 'data-testid': 'toast', 'data-level': level, text: message });
    ui.toasts.append(item);
    while (ui.toasts.children.length > 4) ui.toasts.firstElementChild.remove();
    setTimeout(() => item.remove(), 6000);
  }

  function logFrame(direction, text) {
    state.frames.push({ direction, text: text.length > 400 ? `${text.slice(0, 400)}…` : text });
    if (state.frames.length > FRAME_LOG_LEN) state.frames.shift();
    if (ui.frames.open) renderFrames();
  }

  // ---------------------------------------------------------------- connection

  function wsUrl() {
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (state.auth.token) {
      url.searchParams.set('token', state.auth.token);
    } else {
      url.searchParams.set('user', state.auth.user);
      url.searchParams.set('device', state.auth.device);
    }
    return url;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.stopped = false;
    setStatus('connecting', 'connecting…');
    let socket;
    try {
      socket = new WebSocket(wsUrl(), SUBPROTOCOL);
    } catch (error) {
      signInFailed(`cannot open a WebSocket: ${error.message}`);
      return;
    }
    state.socket = socket;
    socket.addEventListener('message', (event) => {
      if (socket !== state.socket || typeof event.data !== 'string') return;
      logFrame('in', event.data);
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object') dispatch(frame);
    });
    socket.addEventListener('close', (event) => {
      if (socket === state.socket) onClose(event.code, event.reason);
    });
  }

  function onClose(code, reason) {
    const wasSynced = state.synced;
    state.socket = null;
    state.synced = false;
    state.requests.clear();
    state.presenceWatched.clear();
    for (const c of state.convs.values()) {
      c.loadingHistory = false;
      for (const p of c.pending) if (p.state === 'retrying') clearTimeout(p.timer);
      for (const p of c.pending) if (p.state !== 'failed') p.state = 'pending';
    }
    clearTypingSent();
    if (state.stopped) return;
    if (!state.everConnected) {
      signInFailed(
        state.auth.token
          ? 'The server refused the connection: is the token valid and unexpired?'
          : 'The server refused the connection: is it running with --dev, and are the ids valid?',
      );
      return;
    }
    if (code === 4002) {
      stop('replaced by another connection of this device');
      toast('Another window connected as the same user and device; this one stopped.');
      return;
    }
    if (code === 1008) {
      stop('signed out');
      showLogin('Your session expired or was revoked: sign in again.');
      return;
    }
    let delay = state.backoffMs;
    if (code === 1001) delay = 300 + Math.random() * 2000; // shutdown: go elsewhere soon
    if (code === 1013) delay = Math.max(delay, 5000);
    if (code === 4003) delay = Math.max(delay, 30000);
    delay = Math.round(delay * (0.75 + Math.random() * 0.5));
    state.backoffMs = Math.min(BACKOFF_MAX_MS, state.backoffMs * 2);
    const why = reason || `code ${code}`;
    setStatus('offline', `offline, retrying in ${Math.ceil(delay / 1000)} s`);
    if (wasSynced) toast(`Connection lost (${why}); reconnecting.`, 'info');
    state.reconnectTimer = setTimeout(connect, delay);
    render();
  }

  /** Closes the connection on purpose: no automatic reconnect. */
  function stop(label) {
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    const socket = state.socket;
    state.socket = null;
    state.synced = false;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
    setStatus('stopped', label);
  }

  function setStatus(kind, label) {
    ui.status.dataset.state = kind;
    ui.status.textContent = label;
    ui.reconnect.hidden = kind !== 'stopped';
  }

  function sendFrame(frame) {
    const socket = state.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    const text = JSON.stringify(frame);
    socket.send(text);
    logFrame('out', text);
    return true;
  }

  /** Sends a request with a fresh `ref`; the reply (or error) finds `meta` again. */
  function request(type, fields, meta = {}) {
    const ref = `r${state.nextRef++}`;
    if (!sendFrame({ type, ref, ...fields })) return null;
    state.requests.set(ref, { type, ...meta });
    return ref;
  }

  // ---------------------------------------------------------------- server frames

  function dispatch(frame) {
    switch (frame.type) {
      case 'hello': return onHello(frame);
      case 'msg': return onMsg(frame);
      case 'synced': return onSynced(frame);
      case 'ack': return onAck(frame);
      case 'receipt': return onReceipt(frame);
      case 'history': return onHistory(frame);
      case 'group': return onGroup(frame);
      case 'subscribed': return onSubscribed(frame);
      case 'unsubscribed': return onUnsubscribed(frame);
      case 'presence': return onPresence(frame);
      case 'typing': return onTyping(frame);
      case 'error': return onError(frame);
      default: return undefined; // pong, and frame types added later: ignored
    }
  }

  function onHello(hello) {
    state.me = hello.user;
    state.device = hello.device;
    state.limits = hello.limits || {};
    state.everConnected = true;
    ui.hello.replaceChildren(
      el('b', { text: hello.user }),
      ` · ${hello.device}`,
      el('span', { text: `  —  ${hello.node} · ${hello.server}` }),
    );
    setStatus('connecting', 'resuming…');
    showApp();
    if (!state.auth.token) {
      // A reload signs in again as the same user and device.
      const query = new URLSearchParams({ user: hello.user, device: hello.device });
      history.replaceState(null, '', `${location.pathname}?${query}`);
    }
  }

  function onMsg(m) {
    if (typeof m.conv !== 'string' || !Number.isInteger(m.seq)) return;
    const c = conversation(m.conv);
    if (!c.messages.has(m.seq)) {
      c.messages.set(m.seq, m);
      c.latest = Math.max(c.latest, m.seq);
      c.lastActivity = Math.max(c.lastActivity, m.ts || 0);
      if (c.typingUsers.has(m.from)) clearTyping(c, m.from);
      if (c.kind === 'dm') watchPresence([dmPeer(c)]);
    }
    if (m.system) applySystem(c, m.body);
    // Every msg moves this device's cursor (feeds too), or the server replays it next time.
    wantDelivered(c, m.seq);
    if (c.id === state.open) markRead(c);
    render();
  }

  function onSynced(synced) {
    for (const [id, latest] of Object.entries(synced.convs || {})) {
      if (!id.includes(':')) continue;
      const c = conversation(id);
      c.latest = Math.max(c.latest, latest);
    }
    if (synced.ref) return render(); // a sync we asked for: nothing else to redo
    state.synced = true;
    state.backoffMs = BACKOFF_MIN_MS;
    setStatus('online', 'online');
    // What this connection has to redo: sends without an ack (same cmid), feeds,
    // presence, receipts that could not be sent, the open conversation's history.
    for (const c of state.convs.values()) {
      for (const p of c.pending) if (p.state === 'pending') transmit(c, p);
      if (c.kind === 'feed' && c.subscribed) subscribeFeed(c);
      flushDelivered(c);
    }
    const peers = [...state.convs.values()].filter((c) => c.kind === 'dm').map(dmPeer);
    watchPresence(peers);
    const open = state.open && state.convs.get(state.open);
    if (open) {
      if (!open.historyLoaded) loadHistory(open);
      markRead(open);
    }
    render();
  }

  function onAck(ack) {
    const meta = state.requests.get(ack.ref);
    state.requests.delete(ack.ref);
    const c = conversation(ack.conv);
    const index = c.pending.findIndex((p) => (meta && p.cmid === meta.cmid) || p.ref === ack.ref);
    if (index < 0) return;
    const [p] = c.pending.splice(index, 1);
    if (!c.messages.has(ack.seq)) {
      c.messages.set(ack.seq, {
        type: 'msg', conv: ack.conv, seq: ack.seq, mid: ack.mid, from: state.me, dev: state.device,
        ts: ack.ts, body: p.body,
      });
    }
    c.latest = Math.max(c.latest, ack.seq);
    c.lastActivity = Math.max(c.lastActivity, ack.ts || 0);
    render();
  }

  function onReceipt(receipt) {
    const c = conversation(receipt.conv);
    if (receipt.user === state.me) {
      // Another device of mine read it: not unread here either.
      if (receipt.kind === 'read') c.readSent = Math.max(c.readSent, receipt.seq);
    } else {
      c.peerDelivered = Math.max(c.peerDelivered, receipt.seq); // read implies delivered
      if (receipt.kind === 'read') c.peerRead = Math.max(c.peerRead, receipt.seq);
    }
    render();
  }

  function onHistory(page) {
    state.requests.delete(page.ref);
    const c = conversation(page.conv);
    const messages = Array.isArray(page.messages) ? page.messages : [];
    const scrollFromBottom = ui.messages.scrollHeight - ui.messages.scrollTop;
    for (const m of messages) {
      if (!Number.isInteger(m.seq) || c.messages.has(m.seq)) continue;
      c.messages.set(m.seq, m);
      c.latest = Math.max(c.latest, m.seq);
      c.lastActivity = Math.max(c.lastActivity, m.ts || 0);
    }
    const oldest = Math.min(...c.messages.keys());
    c.reachedStart = messages.length === 0 || oldest <= 1;
    const firstPage = !c.historyLoaded;
    c.historyLoaded = true;
    c.loadingHistory = false;
    if (c.id === state.open) markRead(c);
    render();
    // An older page keeps what was on screen in place; the first page starts at the end.
    if (c.id === state.open) {
      ui.messages.scrollTop = firstPage ? ui.messages.scrollHeight : ui.messages.scrollHeight - scrollFromBottom;
    }
  }

  function onGroup(group) {
    const meta = state.requests.get(group.ref) || {};
    state.requests.delete(group.ref);
    const c = conversation(group.conv);
    c.name = group.name || c.name;
    c.members = Array.isArray(group.members) ? group.members : c.members;
    c.lastActivity = Math.max(c.lastActivity, Date.now());
    if (meta.type === 'group_create') openConversation(c.id);
    render();
  }

  function onSubscribed(subscribed) {
    const meta = state.requests.get(subscribed.ref) || {};
    state.requests.delete(subscribed.ref);
    const c = conversation(subscribed.conv);
    c.subscribed = true;
    c.latest = Math.max(c.latest, subscribed.seq || 0);
    if (meta.opens) openConversation(c.id);
    render();
  }

  function onUnsubscribed(unsubscribed) {
    state.requests.delete(unsubscribed.ref);
    const c = state.convs.get(unsubscribed.conv);
    if (!c) return;
    c.subscribed = false;
    state.convs.delete(c.id);
    if (state.open === c.id) state.open = null;
    render();
  }

  function onPresence(presence) {
    state.presence.set(presence.user, { status: presence.status, last_seen: presence.last_seen });
    render();
  }

  function onTyping(typing) {
    if (typing.user === state.me) return;
    const c = conversation(typing.conv);
    clearTyping(c, typing.user, false);
    if (typing.state === 'start') {
      c.typingUsers.set(typing.user, setTimeout(() => clearTyping(c, typing.user), TYPING_SHOW_MS));
    }
    renderTyping();
  }

  function clearTyping(c, user, rerender = true) {
    clearTimeout(c.typingUsers.get(user));
    c.typingUsers.delete(user);
    if (rerender) renderTyping();
  }

  function onError(error) {
    const meta = error.ref ? state.requests.get(error.ref) : null;
    if (error.ref) state.requests.delete(error.ref);
    const text = `${error.code}: ${error.message}`;
    if (!meta) return toast(text);
    const notSupported = error.code === 'bad_request' && /not supported/i.test(error.message || '');
    if (notSupported) state.unsupported.add(meta.type);
    switch (meta.type) {
      case 'send':
        return sendFailed(meta, error);
      case 'presence_sub':
        // Asked for automatically; a server without presence simply shows none.
        return notSupported ? render() : toast(text);
      case 'history': {
        const c = conversation(meta.conv);
        c.loadingHistory = false;
        c.historyLoaded = true;
        toast(`Could not load history: ${text}`);
        return render();
      }
      case 'subscribe':
        if (!meta.opens) return undefined; // a resubscription after a reconnect
        if (notSupported) return toast('Feeds are not supported by this server version yet.');
        return toast(`Could not subscribe: ${text}`);
      case 'group_create':
      case 'group_add':
      case 'group_remove':
        if (notSupported) return toast('Groups are not supported by this server version yet.');
        return toast(`Group change refused: ${text}`);
      default:
        return toast(text);
    }
  }

  // ---------------------------------------------------------------- client actions

  function newCmid() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return `c-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
  }

  function sendMessage(c, text) {
    const body = { text };
    const limit = state.limits.max_body_bytes;
    if (limit && new TextEncoder().encode(JSON.stringify(body)).length > limit) {
      toast(`Message too long (the server takes at most ${limit} bytes).`);
      return false;
    }
    const p = { cmid: newCmid(), body, ref: null, state: 'pending', attempts: 0, error: null, timer: null, ts: Date.now() };
    c.pending.push(p);
    c.lastActivity = Date.now();
    transmit(c, p);
    render();
    ui.messages.scrollTop = ui.messages.scrollHeight;
    return true;
  }

  /** Sends (or resends, with the same cmid) a message still waiting for its ack. */
  function transmit(c, p) {
    clearTimeout(p.timer);
    p.state = 'pending';
    p.error = null;
    if (!state.synced) return; // sent once the connection is back
    p.attempts += 1;
    p.ref = request('send', { conv: c.id, cmid: p.cmid, body: p.body }, { conv: c.id, cmid: p.cmid });
  }

  function sendFailed(meta, error) {
    const c = conversation(meta.conv);
    const p = c.pending.find((candidate) => candidate.cmid === meta.cmid);
    if (!p) return;
    if (RETRYABLE.has(error.code) && p.attempts < SEND_RETRY_LIMIT) {
      // The message may or may not be stored: the same cmid makes the retry safe.
      const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (p.attempts - 1));
      p.state = 'retrying';
      p.timer = setTimeout(() => {
        transmit(c, p);
        render();
      }, error.retry_after_ms || backoff);
    } else {
      p.state = 'failed';
      p.error = `${error.code}: ${error.message}`;
      toast(`Message not sent: ${p.error}`);
    }
    render();
  }

  function wantDelivered(c, seq) {
    c.deliveredWanted = Math.max(c.deliveredWanted, seq);
    if (c.receiptTimer) return;
    // Receipts are cumulative: one per conversation for a burst of messages.
    c.receiptTimer = setTimeout(() => {
      c.receiptTimer = null;
      flushDelivered(c);
    }, 100);
  }

  function flushDelivered(c) {
    const seq = c.deliveredWanted;
    if (seq <= c.deliveredSent) return;
    if (sendFrame({ type: 'receipt', conv: c.id, seq, kind: 'delivered' })) c.deliveredSent = seq;
  }

  /** The open conversation, on screen: `read` up to the newest message from others. */
  function markRead(c) {
    if (c.id !== state.open || document.visibilityState !== 'visible' || !state.synced) return;
    const seq = maxSeq(c, (m) => m.from !== state.me);
    if (seq <= c.readSent) return;
    if (sendFrame({ type: 'receipt', conv: c.id, seq, kind: 'read' })) {
      c.readSent = seq;
      c.deliveredSent = Math.max(c.deliveredSent, seq);
    }
  }

  function loadHistory(c, before) {
    if (c.loadingHistory || !state.synced) return;
    const limit = Math.min(HISTORY_PAGE, state.limits.max_history_limit || HISTORY_PAGE);
    const fields = { conv: c.id, limit };
    if (before) fields.before = before;
    if (request('history', fields, { conv: c.id })) c.loadingHistory = true;
  }

  function watchPresence(users) {
    if (state.unsupported.has('presence_sub') || !state.synced) return;
    const fresh = [...new Set(users)].filter((u) => u && u !== state.me && !state.presenceWatched.has(u));
    if (fresh.length === 0) return;
    if (request('presence_sub', { users: fresh })) for (const u of fresh) state.presenceWatched.add(u);
  }

  function subscribeFeed(c, opens = false) {
    const fields = { conv: c.id };
    const since = maxSeq(c) || (c.subscribed ? c.latest : 0);
    if (since > 0) fields.since = since;
    request('subscribe', fields, { conv: c.id, opens });
  }

  function openConversation(id) {
    if (state.open !== id) stopTyping();
    state.open = id;
    const c = conversation(id);
    if (c.kind === 'dm') watchPresence([dmPeer(c)]);
    if (!c.historyLoaded) loadHistory(c);
    markRead(c);
    render();
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.composerInput.focus();
  }

  // Typing: `start` at most every TYPING_THROTTLE_MS while keys are pressed, `stop`
  // when the text is sent or emptied, or after TYPING_IDLE_MS without a keystroke.
  function onComposerInput() {
    const c = state.open && state.convs.get(state.open);
    if (!c || c.kind === 'feed') return;
    if (ui.composerInput.value.trim() === '') return stopTyping();
    const now = Date.now();
    if (state.typing.conv !== c.id || now - state.typing.sentAt >= TYPING_THROTTLE_MS) {
      if (state.typing.conv && state.typing.conv !== c.id) stopTyping();
      if (sendFrame({ type: 'typing', conv: c.id, state: 'start' })) {
        state.typing.conv = c.id;
        state.typing.sentAt = now;
      }
    }
    clearTimeout(state.typing.idleTimer);
    state.typing.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    if (state.typing.conv) sendFrame({ type: 'typing', conv: state.typing.conv, state: 'stop' });
    clearTypingSent();
  }

  function clearTypingSent() {
    clearTimeout(state.typing.idleTimer);
    state.typing = { conv: null, sentAt: 0, idleTimer: null };
  }

  // ---------------------------------------------------------------- rendering

  function render() {
    if (ui.app.hidden) return;
    renderConversations();
    renderOpen();
  }

  function renderConversations() {
    const convs = [...state.convs.values()].sort((a, b) => b.lastActivity - a.lastActivity || a.id.localeCompare(b.id));
    const items = convs.map((c) => {
      const last = c.messages.get(maxSeq(c));
      const pending = c.pending[c.pending.length - 1];
      const text = pending ? bodyText(pending.body) : last ? preview(last) : c.latest ? `${c.latest} messages` : 'no messages yet';
      const unread = unreadCount(c);
      const peer = dmPeer(c);
      const presence = peer && state.presence.get(peer);
      return el(
        'li',
        {
          class: 'conv',
          'data-testid': 'conv-item',
          'data-conv': c.id,
          'aria-current': c.id === state.open ? 'true' : 'false',
          tabindex: 0,
          onclick: () => openConversation(c.id),
          onkeydown: (event) => event.key === 'Enter' && openConversation(c.id),
        },
        el(
          'span',
          { class: 'title' },
          presence ? el('span', { class: 'dot', 'data-status': presence.status }) : null,
          title(c),
          c.kind !== 'dm' ? el('span', { class: 'kind', text: c.kind }) : null,
        ),
        unread ? el('span', { class: 'badge', 'data-testid': 'unread', text: String(unread) }) : el('span'),
        el('span', { class: 'preview', 'data-testid': 'conv-preview', text }),
      );
    });
    ui.convList.replaceChildren(...items);
  }

  function renderOpen() {
    const c = state.open && state.convs.get(state.open);
    ui.chatEmpty.hidden = Boolean(c);
    ui.chatBody.hidden = !c;
    if (!c) return;
    ui.chatTitle.textContent = title(c);
    ui.chatSub.textContent = subtitle(c);
    ui.membersForm.hidden = c.kind !== 'group';
    ui.unsubscribe.hidden = c.kind !== 'feed' || !c.subscribed;

    const nearBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    const seqs = [...c.messages.keys()].sort((a, b) => a - b);
    const items = seqs.map((seq) => messageItem(c, c.messages.get(seq)));
    for (const p of c.pending) items.push(pendingItem(c, p));
    ui.messageList.replaceChildren(...items);
    const oldest = seqs.length ? seqs[0] : 0;
    ui.loadOlder.hidden = !c.historyLoaded || c.reachedStart || oldest <= 1;
    ui.loadOlder.disabled = c.loadingHistory;
    if (nearBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
    renderTyping();
  }

  function subtitle(c) {
    if (c.kind === 'dm') {
      const presence = state.presence.get(dmPeer(c));
      if (presence && presence.status === 'online') return 'online';
      if (presence && presence.last_seen) return `last seen ${ago(presence.last_seen)}`;
      return 'direct messages';
    }
    if (c.kind === 'group') return c.members ? `members: ${c.members.join(', ')}` : 'group';
    return c.subscribed ? 'feed, subscribed' : 'feed';
  }

  function ticks(c, seq) {
    if (seq <= c.peerRead) return { state: 'read', mark: '✓✓', label: 'read' };
    if (seq <= c.peerDelivered) return { state: 'delivered', mark: '✓✓', label: 'delivered' };
    return { state: 'sent', mark: '✓', label: 'sent' };
  }

  function messageItem(c, m) {
    const own = m.from === state.me;
    const time = el('time', { datetime: new Date(m.ts).toISOString(), title: new Date(m.ts).toLocaleString(), text: timeOf(m.ts) });
    const text = m.system ? describeSystem(m.body) ?? bodyText(m.body) : bodyText(m.body);
    const content = text !== null ? text : el('code', { text: JSON.stringify(m.body) });
    if (m.system) {
      return el(
        'li',
        { class: 'msg system', 'data-testid': 'message', 'data-system': 'true', 'data-seq': m.seq },
        el('div', { class: 'bubble' }, content, el('span', { class: 'meta' }, ' · ', time)),
      );
    }
    let tick = null;
    if (own) {
      const t = ticks(c, m.seq);
      tick = el('span', { class: 'ticks', 'data-testid': 'ticks', 'data-state': t.state, title: t.label, text: t.mark });
    }
    const showFrom = !own && c.kind !== 'dm';
    return el(
      'li',
      {
        class: own ? 'msg own' : 'msg',
        'data-testid': 'message',
        'data-seq': m.seq,
        'data-from': m.from,
        'data-state': tick ? tick.dataset.state : null,
      },
      showFrom ? el('span', { class: 'from', text: m.from }) : null,
      el('div', { class: 'bubble' }, el('span', { class: 'meta' }, time, tick), el('span', { 'data-testid': 'message-text' }, content)),
    );
  }

  function pendingItem(c, p) {
    const failed = p.state === 'failed';
    const tick = el('span', {
      class: 'ticks',
      'data-testid': 'ticks',
      'data-state': failed ? 'failed' : 'pending',
      title: failed ? p.error : p.state === 'retrying' ? 'retrying' : 'sending',
      text: failed ? '!' : '…',
    });
    return el(
      'li',
      { class: `msg own ${failed ? 'failed' : 'pending'}`, 'data-testid': 'message', 'data-pending': 'true', 'data-state': tick.dataset.state, 'data-cmid': p.cmid },
      el('div', { class: 'bubble' }, el('span', { class: 'meta' }, tick), el('span', { 'data-testid': 'message-text', text: bodyText(p.body) })),
      failed
        ? el('button', {
            type: 'button',
            class: 'link retry',
            'data-testid': 'retry',
            text: 'Retry',
            onclick: () => {
              p.attempts = 0;
              transmit(c, p);
              render();
            },
          })
        : null,
    );
  }

  function renderTyping() {
    const c = state.open && state.convs.get(state.open);
    const users = c ? [...c.typingUsers.keys()] : [];
    ui.typing.textContent =
      users.length === 0 ? '' : users.length === 1 ? `${users[0]} is typing…` : `${users.join(' and ')} are typing…`;
  }

  function renderFrames() {
    const items = state.frames.map((f) =>
      el('li', { 'data-dir': f.direction, text: `${f.direction === 'in' ? '←' : '→'} ${f.text}` }),
    );
    ui.frameLog.replaceChildren(...items);
    ui.frameLog.scrollTop = ui.frameLog.scrollHeight;
  }

  // ---------------------------------------------------------------- screens

  function showLogin(error = '') {
    ui.app.hidden = true;
    ui.login.hidden = false;
    ui.signOut.hidden = true;
    ui.reconnect.hidden = true;
    ui.loginError.textContent = error;
    ui.hello.replaceChildren();
  }

  function showApp() {
    ui.login.hidden = true;
    ui.app.hidden = false;
    ui.signOut.hidden = false;
    render();
  }

  function signIn(auth) {
    state.auth = auth;
    state.everConnected = false;
    state.backoffMs = BACKOFF_MIN_MS;
    ui.loginError.textContent = '';
    connect();
  }

  function signInFailed(message) {
    stop('offline');
    showLogin(message);
  }

  function signOut() {
    stopTyping();
    stop('offline');
    state.auth = null;
    state.me = null;
    state.convs.clear();
    state.presence.clear();
    state.unsupported.clear();
    state.open = null;
    history.replaceState(null, '', location.pathname);
    setStatus('offline', 'offline');
    showLogin();
  }

  function parseUsers(text) {
    const users = text.split(/[\s,]+/).filter(Boolean);
    const bad = users.find((u) => !ID_PATTERN.test(u));
    if (bad) {
      toast(`"${bad}" is not a valid user id (1 to 64 of A-Z a-z 0-9 _ . @ -).`);
      return null;
    }
    return users;
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    Object.assign(ui, {
      app: $('#app'),
      login: $('#login'),
      loginForm: $('#login-form'),
      loginError: $('[data-testid=login-error]'),
      hello: $('[data-testid=hello]'),
      status: $('[data-testid=status]'),
      reconnect: $('#reconnect'),
      signOut: $('#sign-out'),
      convList: $('[data-testid=conv-list]'),
      chatEmpty: $('#chat-empty'),
      chatBody: $('#chat-body'),
      chatTitle: $('[data-testid=chat-title]'),
      chatSub: $('[data-testid=chat-sub]'),
      membersForm: $('#members-form'),
      unsubscribe: $('#unsubscribe'),
      messages: $('#messages'),
      messageList: $('#message-list'),
      loadOlder: $('#load-older'),
      typing: $('[data-testid=typing]'),
      composer: $('#composer'),
      composerInput: $('[data-testid=composer-input]'),
      frames: $('#frames'),
      frameLog: $('[data-testid=frame-log]'),
      toasts: $('[data-testid=toasts]'),
    });

    ui.loginForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const form = new FormData(ui.loginForm);
      const token = String(form.get('token') || '').trim();
      if (token) return signIn({ token });
      const user = String(form.get('user') || '').trim();
      const device = String(form.get('device') || '').trim() || 'web';
      if (!ID_PATTERN.test(user) || !ID_PATTERN.test(device)) {
        ui.loginError.textContent = 'User and device ids are 1 to 64 of A-Z a-z 0-9 _ . @ -';
        return undefined;
      }
      return signIn({ user, device });
    });
    ui.signOut.addEventListener('click', signOut);
    ui.reconnect.addEventListener('click', () => state.auth && connect());

    $('#new-dm').addEventListener('submit', (event) => {
      event.preventDefault();
      const input = event.target.elements.peer;
      const peer = input.value.trim();
      if (!ID_PATTERN.test(peer)) return toast('A user id is 1 to 64 of A-Z a-z 0-9 _ . @ -');
      input.value = '';
      const c = conversation(dmId(state.me, peer));
      c.lastActivity = c.lastActivity || Date.now();
      return openConversation(c.id);
    });

    $('#new-group').addEventListener('submit', (event) => {
      event.preventDefault();
      const { name, members } = event.target.elements;
      const users = parseUsers(members.value);
      if (!users) return;
      if (!name.value.trim()) return void toast('A group needs a name.');
      if (request('group_create', { name: name.value.trim(), members: users }))
        event.target.reset();
      else toast('Not connected.');
    });

    $('#new-feed').addEventListener('submit', (event) => {
      event.preventDefault();
      const input = event.target.elements.feed;
      const id = input.value.trim().replace(/^feed:/, '');
      if (!ID_PATTERN.test(id)) return void toast('A feed id is 1 to 64 of A-Z a-z 0-9 _ . @ -');
      const c = conversation(`feed:${id}`);
      c.lastActivity = c.lastActivity || Date.now();
      input.value = '';
      subscribeFeed(c, true);
    });

    ui.membersForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const op = event.submitter && event.submitter.value;
      const users = parseUsers(ui.membersForm.elements.members.value);
      if (!users || users.length === 0 || !state.open) return;
      if (request(op, { conv: state.open, members: users }, { conv: state.open })) ui.membersForm.reset();
    });

    ui.unsubscribe.addEventListener('click', () => {
      if (state.open) request('unsubscribe', { conv: state.open }, { conv: state.open });
    });

    ui.loadOlder.addEventListener('click', () => {
      const c = state.open && state.convs.get(state.open);
      if (c) loadHistory(c, Math.min(...c.messages.keys()));
    });

    ui.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      const c = state.open && state.convs.get(state.open);
      const text = ui.composerInput.value.trim();
      if (!c || !text) return;
      if (sendMessage(c, text)) {
        ui.composerInput.value = '';
        stopTyping();
      }
    });
    ui.composerInput.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        ui.composer.requestSubmit();
      }
    });
    ui.composerInput.addEventListener('input', onComposerInput);

    ui.frames.addEventListener('toggle', () => ui.frames.open && renderFrames());
    document.addEventListener('visibilitychange', () => {
      const c = state.open && state.convs.get(state.open);
      if (c) markRead(c);
    });
    window.addEventListener('online', () => state.reconnectTimer && connect());
    // Presence "last seen" and similar relative times stay current.
    setInterval(() => state.open && renderOpen(), 30000);

    // `/?user=alice&device=web` signs in directly (dev mode); a token is never put in the URL.
    const query = new URLSearchParams(location.search);
    const user = query.get('user');
    if (user && ID_PATTERN.test(user)) {
      const device = query.get('device');
      ui.loginForm.elements.user.value = user;
      if (device) ui.loginForm.elements.device.value = device;
      signIn({ user, device: device && ID_PATTERN.test(device) ? device : 'web' });
    } else {
      showLogin();
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
