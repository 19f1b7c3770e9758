// The space page (/s/{id}): join, the live view from the events WebSocket,
// the controls of each role, listening and speaking. Every control calls the
// REST API; what the page shows comes from the events channel, never from
// guessing that a call worked.
import { api, tokens, say, describe } from "/assets/api.js";
import { Player } from "/assets/listen.js";
import { Mic } from "/assets/speak.js";
import { drawListeners, summary } from "/assets/chart.js";

const spaceId = location.pathname.split("/").filter(Boolean)[1] || "";
const $ = (id) => document.getElementById(id);
const status = $("status");
const state = { showCaptions: true, space: null, you: null, talking: {}, player: null, mic: null, events: "closed", removed: null, reactionsSeen: {}, reminded: false };

window.amphi = {
  state,
  /** dB of the program this page plays, at each frequency (e2e tests). */
  toneProbe: (freqs) => (state.player ? state.player.probe(freqs) : freqs.map(() => -Infinity)),
  /** dB at each frequency in the left and right channel the page plays. */
  channelProbe: (freqs) => (state.player ? state.player.channelProbe(freqs) : null),
  /** Player counters: frames received/lost, reconnects, buffer, delay. */
  stats: () => (state.player ? { ...state.player.stats } : null),
  /** The microphone track's settings (echoCancellation, channelCount…). */
  micSettings: () => (state.mic && state.mic.stream ? state.mic.stream.getAudioTracks()[0].getSettings() : null),
  /** Whether the page holds a live microphone track. */
  micLive: () => Boolean(state.mic && state.mic.stream && state.mic.stream.getAudioTracks().some((t) => t.readyState === "live")),
};

const ROLE = { host: "host", cohost: "co-host", speaker: "speaker", listener: "listener" };
const isMod = () => state.you && (state.you.role === "host" || state.you.role === "cohost");

function err(e) { say(status, describe(e), true); }

async function act(method, path, body) {
  try {
    await api(method, `/api/v1/spaces/${spaceId}${path}`, { token: tokens.get(spaceId), body });
    if (status.classList.contains("error")) say(status, "");
    return true;
  } catch (e) {
    err(e);
    return false;
  }
}

function initials(name) {
  return name.trim().split(/\s+/).map((w) => [...w][0] || "").join("").slice(0, 2).toUpperCase() || "?";
}

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

function button(label, onClick, testid, cls) {
  const b = el("button", { type: "button", textContent: label });
  if (testid) b.dataset.testid = testid;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

// Keeps keyboard focus on the same control across re-renders of a list.
function keepFocus(container, rebuild) {
  const active = document.activeElement;
  const id = container.contains(active) ? active.dataset.testid : null;
  rebuild();
  if (id) container.querySelector(`[data-testid="${CSS.escape(id)}"]`)?.focus();
}

function stageItem(m) {
  const you = state.you;
  const me = you && m.participant_id === you.participant_id;
  const level = m.muted ? 0 : state.talking[m.participant_id] || 0;
  const talking = level > 8;
  const li = el("li", { className: talking ? "talking" : "" });
  li.dataset.pid = m.participant_id;
  li.dataset.testid = `stage-${m.name}`;
  const av = el("div", { className: "avatar", textContent: initials(m.name) });
  av.style.setProperty("--level", String(Math.min(1, level / 64)));
  av.setAttribute("aria-hidden", "true");
  const who = el("strong", { className: "name", textContent: m.name + (me ? " (you)" : "") });
  const role = el("span", { className: "role", textContent: ROLE[m.role] || m.role });
  li.append(av, who, role);
  const flags = [];
  if (m.muted) {
    li.append(el("span", { className: "mutedmark", textContent: "🔇 muted" }));
    flags.push("muted");
  }
  if (talking) flags.push("speaking");
  li.setAttribute("aria-label", [m.name + (me ? " (you)" : ""), ROLE[m.role] || m.role, ...flags].join(", "));

  if (isMod() && !me && m.role !== "host") {
    const name = m.name;
    const pid = m.participant_id;
    const actions = el("div", { className: "actions", role: "group" });
    actions.setAttribute("aria-label", `Actions for ${name}`);
    if (!m.muted) actions.append(button("Mute", () => act("POST", `/participants/${pid}/mute`), `mute-${name}`));
    actions.append(button("Move to audience", () => act("DELETE", `/stage/${pid}`), `demote-${name}`));
    if (you.role === "host") {
      actions.append(m.role === "cohost"
        ? button("Dismiss co-host", () => act("DELETE", `/cohosts/${pid}`), `dismiss-${name}`)
        : button("Make co-host", () => act("POST", `/cohosts/${pid}`), `appoint-${name}`));
    }
    actions.append(button("Remove", () => act("POST", `/participants/${pid}/remove`, { ban: false }), `remove-${name}`));
    actions.append(button("Ban", () => {
      if (confirm(`Ban ${name} from this space? They will not be able to rejoin.`)) {
        act("POST", `/participants/${pid}/remove`, { ban: true });
      }
    }, `ban-${name}`, "danger"));
    li.append(actions);
  }
  return li;
}

function handItem(h) {
  const me = state.you && h.participant_id === state.you.participant_id;
  const li = el("li", {}, el("span", { textContent: `✋ ${h.name}${me ? " (you)" : ""}` }));
  if (isMod()) {
    li.append(button("Accept", () => act("POST", `/stage/${h.participant_id}`), `accept-${h.name}`, "primary"));
  }
  return li;
}

// Raised hands shown at once; the rest are counted (the queue holds 500).
const HANDS_SHOWN = 50;

/** The hand queue after an update's changes: `removed` out, then `added`
 * appended (or renamed in place if already there). */
function applyHands(list, d) {
  if (!d) return list;
  const gone = new Set(d.removed || []);
  const out = list.filter((h) => !gone.has(h.participant_id));
  for (const h of d.added || []) {
    const i = out.findIndex((x) => x.participant_id === h.participant_id);
    if (i >= 0) out[i] = h;
    else out.push(h);
  }
  return out;
}

let handsShown = "";
function renderHands(hands) {
  // Rebuilt only when the queue (or who may accept) changed.
  const key = `${isMod()}:${state.you && state.you.participant_id}:${hands.length}:${hands.slice(0, HANDS_SHOWN).map((h) => h.participant_id + h.name).join()}`;
  if (key === handsShown) return;
  handsShown = key;
  $("hands-box").hidden = hands.length === 0;
  const items = hands.slice(0, HANDS_SHOWN).map(handItem);
  if (hands.length > HANDS_SHOWN) items.push(el("li", { textContent: `and ${hands.length - HANDS_SHOWN} more` }));
  keepFocus($("hands"), () => $("hands").replaceChildren(...items));
}

// The audience a moderator sees (polled while they moderate; the list is
// bounded by the server): present listeners with an Invite button.
let audiencePoll = null;
async function refreshAudience() {
  try {
    const a = await api("GET", `/api/v1/spaces/${spaceId}/audience?limit=100`, { token: tokens.get(spaceId) });
    const more = a.total > a.audience.length ? ` (newest ${a.audience.length} of ${a.total})` : ` (${a.total})`;
    $("audience-total").textContent = more;
    const items = a.audience.filter((p) => p.role === "listener").map((p) => {
      const li = el("li", {}, el("span", { textContent: p.name }));
      li.dataset.testid = `audience-${p.name}`;
      if (p.invited) li.append(el("span", { className: "hint", textContent: " · invited" }));
      else li.append(button("Invite to speak", async () => { if (await act("POST", `/invitations/${p.participant_id}`)) refreshAudience(); }, `invite-${p.name}`));
      return li;
    });
    keepFocus($("audience"), () => $("audience").replaceChildren(...items));
  } catch { /* next tick */ }
}

function syncAudience(show) {
  $("audience-box").hidden = !show;
  if (show && !audiencePoll) {
    refreshAudience();
    audiencePoll = setInterval(refreshAudience, 2000);
  } else if (!show && audiencePoll) {
    clearInterval(audiencePoll);
    audiencePoll = null;
  }
}

// The host's analytics: refreshed every 10 s (the server's resolution)
// while the host or a co-host looks, live and after the end.
let statsPoll = null;
let lastStats = null;
async function refreshStats() {
  try {
    lastStats = await api("GET", `/api/v1/spaces/${spaceId}/stats`, { token: tokens.get(spaceId) });
    $("stats-box").hidden = false;
    drawListeners($("chart"), lastStats);
    $("stats-summary").textContent = summary(lastStats);
  } catch { /* not allowed or not yet: stay hidden */ }
}
function syncStats(show) {
  if (show && !statsPoll) {
    refreshStats();
    statsPoll = setInterval(refreshStats, 10000);
  } else if (!show && statsPoll) {
    clearInterval(statsPoll);
    statsPoll = null;
    $("stats-box").hidden = true;
  }
}
window.addEventListener("resize", () => { if (lastStats && !$("stats-box").hidden) drawListeners($("chart"), lastStats); });
window.amphi.refreshStats = refreshStats;

let invitationTimer = null;
function renderInvitation(inv) {
  clearTimeout(invitationTimer);
  const left = inv ? Date.parse(inv.expires_at) - Date.now() : 0;
  $("invitation").hidden = !(inv && left > 0);
  if (inv && left > 0) {
    $("invitation-text").textContent = `${inv.by.name} invites you to speak on stage.`;
    // Unanswered, it lapses: nothing changes.
    invitationTimer = setTimeout(() => { $("invitation").hidden = true; }, left);
  }
}

function render() {
  const { space, you } = state;
  if (!space) return;
  const live = space.state === "live";
  const onStage = Boolean(you && you.on_stage);
  document.title = `${space.title} — amphi`;
  $("title").textContent = space.title;
  // In a cluster a live space can lose its mixing node for a few seconds
  // until another one takes it over (on_air false): say so.
  const offAir = live && space.on_air === false;
  $("state").textContent = offAir ? "Reconnecting…" : space.state === "live" ? "Live" : space.state === "scheduled" ? "Scheduled" : "Ended";
  $("state").className = `pill ${offAir ? "scheduled" : space.state}`;
  const audience = `${space.listener_count} listening`;
  $("meta").textContent = space.state === "ended"
    ? ""
    : `· ${audience} · ${space.stage.length}/${space.max_stage} on stage`;
  $("live-badge").hidden = !live || offAir;
  if (!state.player) $("delay").textContent = "";

  keepFocus($("stage"), () => $("stage").replaceChildren(...space.stage.map(stageItem)));
  renderHands(space.hands_raised || []);

  // Your controls, from your role now.
  $("start").hidden = !(isMod() && space.state === "scheduled");
  $("end").hidden = !(you && you.role === "host" && space.state !== "ended");
  $("hand").hidden = !you || onStage || !live;
  $("clip").hidden = !you || !live;
  $("hand").textContent = you && you.hand_raised ? "Lower hand" : "✋ Raise hand";
  $("hand").setAttribute("aria-pressed", String(Boolean(you && you.hand_raised)));
  // A scheduled space: a listener asks to be reminded when it starts (a
  // `space.reminder` webhook for the operator's system to deliver).
  $("remind").hidden = !(you && space.state === "scheduled" && !isMod());
  $("remind").textContent = state.reminded ? "🔔 Reminder set (cancel)" : "🔔 Remind me";
  $("remind").setAttribute("aria-pressed", String(Boolean(state.reminded)));
  $("mic").hidden = !(onStage && live && !state.mic);
  $("mute-self").hidden = !(onStage && live);
  $("mute-self").textContent = you && you.muted ? "🎙 Unmute" : "Mute";
  $("mute-self").setAttribute("aria-pressed", String(Boolean(you && you.muted)));
  $("leave-stage").hidden = !(onStage && you.role !== "host");
  // Speakers hear the others on their WHIP connection; the program would
  // play their own voice back, late.
  $("listen").hidden = !live || Boolean(state.mic);
  $("listen").textContent = state.player ? "■ Stop listening" : "▶ Listen";

  syncAudience(isMod() && live);
  syncStats(isMod());
  renderInvitation(live && you && !onStage ? you.invitation : null);

  // Captions: anyone may show them when the space has them; the host
  // turns them on or off for everyone.
  const captioned = Boolean(space.captions);
  $("captions-toggle").hidden = !captioned || !live;
  $("captions-toggle").setAttribute("aria-pressed", String(state.showCaptions));
  $("captions").hidden = !captioned || !live || !state.showCaptions;
  $("captions-host").hidden = !(you && you.role === "host" && space.state !== "ended");
  $("captions-host").textContent = captioned ? "Turn captions off" : "Turn captions on";

  if (space.state === "ended") showEnded();

  // Off stage (left, moved, removed) or not live: the microphone goes.
  if (state.mic && (!onStage || !live)) {
    stopMic();
    if (live) say(status, "You are back in the audience; your microphone was released.");
  }
  if (state.mic && you && you.muted) state.mic.setEnabled(false);
  if (state.mic && you && !you.muted) state.mic.setEnabled(true);
}

function showCaption(cue) {
  if (!state.showCaptions) return;
  const box = $("captions");
  box.append(el("p", {}, el("strong", { textContent: `${cue.name}: ` }), cue.text));
  while (box.childElementCount > 3) box.firstElementChild.remove();
}

let transcriptLoaded = false;
async function loadTranscript() {
  if (transcriptLoaded || !state.space.captions) return;
  transcriptLoaded = true;
  let cues;
  try {
    cues = (await api("GET", `/spaces/${spaceId}/transcript.json`)).cues || [];
  } catch {
    transcriptLoaded = false;
    setTimeout(loadTranscript, 2000);
    return;
  }
  const list = $("transcript");
  const items = cues.map((c) => {
    const b = el("button", { type: "button", textContent: `${fmtTime(c.start_ms)} ${c.name}: ${c.text}` });
    b.dataset.text = `${c.name} ${c.text}`.toLowerCase();
    // The recording starts with the program: program time is its time.
    b.addEventListener("click", () => {
      const a = $("replay");
      a.currentTime = c.start_ms / 1000;
      a.play().catch(() => {});
    });
    return el("li", {}, b);
  });
  list.replaceChildren(...items);
  $("transcript-box").hidden = items.length === 0;
  const search = $("transcript-search");
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    for (const li of list.children) li.hidden = q !== "" && !li.firstElementChild.dataset.text.includes(q);
  });
}

function fmtTime(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function showEnded() {
  const space = state.space;
  stopMic();
  stopPlayer();
  $("join").hidden = true;
  $("room").hidden = true;
  $("ended").hidden = false;
  if (!space.record) {
    $("ended-text").textContent = "This space was not recorded.";
  } else if (space.replay) {
    $("ended-text").textContent = "Listen to the recording:";
    if (!$("replay").getAttribute("src")) $("replay").src = space.replay.ogg;
    $("replay").hidden = false;
    $("replay-link").href = space.replay.ogg;
    $("replay-link").hidden = false;
    loadTranscript();
  } else {
    $("ended-text").textContent = "The recording is being published…";
    pollReplay();
  }
}

let replayPoll = null;
function pollReplay() {
  if (replayPoll) return;
  replayPoll = setInterval(async () => {
    try {
      const s = await api("GET", `/api/v1/spaces/${spaceId}`);
      state.space = s;
      if (s.replay || !s.record) {
        clearInterval(replayPoll);
        replayPoll = null;
        render();
      }
    } catch { /* try again next tick */ }
  }, 1000);
}

function floatReactions(counts) {
  const box = $("floats");
  for (const [emoji, n] of Object.entries(counts || {})) {
    state.reactionsSeen[emoji] = (state.reactionsSeen[emoji] || 0) + n;
    for (let i = 0; i < Math.min(n, 6); i++) {
      if (box.childElementCount > 40) return;
      const s = el("span", { textContent: emoji });
      s.style.left = `${Math.random() * 70}%`;
      s.style.animationDelay = `${i * 0.18}s`;
      s.addEventListener("animationend", () => s.remove());
      box.append(s);
      setTimeout(() => s.remove(), 4000);
    }
  }
}

function removed(banned) {
  state.removed = { banned };
  stopMic();
  stopPlayer();
  // A banned participant's token is kept: a reload shows the ban again
  // instead of rejoining, and a join sends it (the server refuses it).
  if (!banned) tokens.drop(spaceId);
  $("room").hidden = true;
  say(status, banned ? "You were removed from this space and banned from rejoining." : "You were removed from this space. You can join again.", true);
  if (!banned) $("join").hidden = false;
}

let eventsBackoff = 500;
let failedOpens = 0;
function connectEvents() {
  const token = tokens.get(spaceId);
  if (!token) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/spaces/${spaceId}/events?token=${encodeURIComponent(token)}`);
  state.events = "connecting";
  let opened = false;
  let terminal = false;
  ws.onopen = () => {
    opened = true;
    failedOpens = 0;
    eventsBackoff = 500;
    state.events = "open";
  };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    if (m.type === "snapshot" || m.type === "update") {
      // A snapshot carries the whole hand queue; an update what changed.
      const hands = m.space.hands_raised
        || applyHands((state.space && state.space.hands_raised) || [], m.hands);
      state.space = { ...m.space, hands_raised: hands };
      state.you = m.you;
      // Remembered so the page knows after the end whether this is the
      // host's (or a co-host's), who may see the analytics.
      if (m.you) localStorage.setItem(`amphi.role.${spaceId}`, m.you.role);
      state.talking = m.talking || {};
      floatReactions(m.reactions);
      render();
    } else if (m.type === "caption") {
      showCaption(m.caption);
    } else if (m.type === "removed") {
      terminal = true;
      removed(Boolean(m.banned));
    } else if (m.type === "ended") {
      terminal = true;
      if (state.space) state.space = { ...state.space, state: "ended" };
      render();
    }
  };
  ws.onclose = async () => {
    state.events = "closed";
    if (terminal || state.removed) return;
    if (!opened && ++failedOpens >= 3) {
      // Refused three times: find out whether the space or the pass is gone.
      try {
        const s = await api("GET", `/api/v1/spaces/${spaceId}`);
        state.space = s;
        if (s.state === "ended") { render(); return; }
        tokens.drop(spaceId);
        $("room").hidden = true;
        $("join").hidden = false;
        say(status, "Your pass for this space is no longer valid. Join again.", true);
        render();
        return;
      } catch (e) {
        if (e.status === 404) { say(status, "This space does not exist.", true); return; }
      }
    }
    say(status, "Connection to the space lost; reconnecting…");
    setTimeout(connectEvents, eventsBackoff);
    eventsBackoff = Math.min(eventsBackoff * 2, 8000);
  };
}

async function loadSpace() {
  try {
    state.space = await api("GET", `/api/v1/spaces/${spaceId}`);
    render();
    return true;
  } catch (e) {
    if (e.status === 404) say(status, "This space does not exist.", true);
    else err(e);
    return false;
  }
}

function enter() {
  $("join").hidden = true;
  $("room").hidden = false;
  connectEvents();
}

function stopPlayer() {
  state.player?.stop();
  state.player = null;
  $("delay").textContent = "";
}

function stopMic() {
  state.mic?.stop();
  state.mic = null;
}

async function startPlayer() {
  const p = new Player(spaceId, tokens.get(spaceId), {
    fallbackEl: $("fallback"),
    onDelay: (ms) => { $("delay").textContent = ` · ${(ms / 1000).toFixed(1)} s`; },
    onStatus: (text, bad) => say(status, text, bad),
    onEnded: () => {
      if (state.space) state.space = { ...state.space, state: "ended" };
      render();
    },
  });
  state.player = p;
  render();
  try {
    await p.start();
  } catch (e) {
    if (state.player === p) stopPlayer();
    err(e);
    render();
  }
}

$("join").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const btn = $("join").querySelector("button");
  btn.disabled = true;
  try {
    const res = await api("POST", `/api/v1/spaces/${spaceId}/join`, { token: tokens.get(spaceId) || undefined, body: { name: $("name").value.trim() } });
    tokens.set(spaceId, res.token);
    state.removed = null;
    say(status, "");
    enter();
  } catch (e) {
    if (e.status === 503) say(status, `This space is full right now. ${describe(e)}`, true);
    else if (e.status === 403) say(status, `You cannot join this space: ${e.message}`, true);
    else err(e);
  } finally {
    btn.disabled = false;
  }
});

$("listen").addEventListener("click", () => {
  if (state.player) {
    stopPlayer();
    render();
  } else {
    startPlayer();
  }
});

$("invitation-accept").addEventListener("click", async () => {
  $("invitation").hidden = true;
  await act("POST", `/invitations/${state.you.participant_id}/accept`);
});
$("invitation-decline").addEventListener("click", async () => {
  $("invitation").hidden = true;
  await act("POST", `/invitations/${state.you.participant_id}/decline`);
});
$("hand").addEventListener("click", () => act(state.you && state.you.hand_raised ? "DELETE" : "POST", "/hand"));
$("start").addEventListener("click", () => act("POST", "/start"));
$("remind").addEventListener("click", async () => {
  const on = !state.reminded;
  if (await act(on ? "POST" : "DELETE", "/reminders", on ? {} : undefined)) {
    state.reminded = on;
    say(status, on ? "You will be reminded when this space starts." : "Reminder cancelled.");
    render();
  }
});
$("captions-toggle").addEventListener("click", () => {
  state.showCaptions = !state.showCaptions;
  if (!state.showCaptions) $("captions").replaceChildren();
  render();
});
$("captions-host").addEventListener("click", async () => {
  const on = !(state.space && state.space.captions);
  if (await act("PATCH", "", { captions: on })) {
    state.space = { ...state.space, captions: on };
    render();
  }
});
$("end").addEventListener("click", () => {
  if (confirm("End this space for everyone?")) act("POST", "/end");
});
$("leave-stage").addEventListener("click", () => act("DELETE", `/stage/${state.you.participant_id}`));
$("mute-self").addEventListener("click", () => {
  const muting = !state.you.muted;
  // Silencing is safe to do at once; unmuting waits for the server's word.
  if (muting) state.mic?.setEnabled(false);
  act("POST", `/participants/${state.you.participant_id}/${muting ? "mute" : "unmute"}`);
});
$("mic").addEventListener("click", async () => {
  const mic = new Mic(spaceId, tokens.get(spaceId), {
    music: Boolean(state.space && state.space.music),
    returnEl: $("return-audio"),
    onState: (s) => {
      if (state.mic !== mic) return;
      if (s === "reconnecting") say(status, "Reconnecting your mic…");
      if (s === "reconnected") say(status, "You are live on stage again.");
      if (s === "failed") say(status, "The audio connection failed. Start your mic again.", true);
      if (s === "mic-ended") say(status, "Your microphone stopped (unplugged or taken by another app).", true);
      if (s === "failed" || s === "mic-ended") { stopMic(); render(); }
    },
  });
  stopPlayer();
  state.mic = mic;
  render();
  $("mic").disabled = true;
  say(status, "Starting your microphone…");
  try {
    await mic.start();
    if (state.mic === mic) {
      if (state.you && state.you.muted) mic.setEnabled(false);
      say(status, state.you && state.you.muted ? "You are on stage, muted." : "You are live on stage.");
    }
  } catch (e) {
    if (state.mic === mic) state.mic = null;
    mic.stop();
    if (e && e.name === "NotAllowedError") {
      say(status, "Microphone access was refused. Allow the microphone for this site, then press “Start your mic” again.", true);
    } else if (e && e.code === "insecure") {
      say(status, e.message, true);
    } else if (e && e.code !== "cancelled") {
      err(e);
    }
  } finally {
    $("mic").disabled = false;
    render();
  }
});
$("leave").addEventListener("click", async () => {
  stopMic();
  stopPlayer();
  // A listener on stage or with a hand up steps down before leaving.
  if (state.you && state.you.on_stage && state.you.role !== "host") await act("DELETE", `/stage/${state.you.participant_id}`);
  else if (state.you && state.you.hand_raised) await act("DELETE", "/hand");
  location.href = "/";
});
// Clip the last 30 s: the server cuts it from the live program; the link
// to its share page is shown (and copied when the browser allows it).
$("clip").addEventListener("click", async () => {
  const b = $("clip");
  b.disabled = true;
  try {
    const r = await api("POST", `/api/v1/spaces/${spaceId}/clips`, { token: tokens.get(spaceId) });
    const url = new URL(r.clip.page, location.href).href;
    $("clip-link").href = r.clip.page;
    $("clip-link").textContent = url;
    $("clip-made").hidden = false;
    if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
    if (status.classList.contains("error")) say(status, "");
  } catch (e) {
    err(e);
  } finally {
    b.disabled = false;
  }
});

document.querySelectorAll("[data-emoji]").forEach((b) =>
  b.addEventListener("click", () => act("POST", "/reactions", { emoji: b.dataset.emoji })));
window.addEventListener("pagehide", () => stopMic());

(async () => {
  const ok = await loadSpace();
  if (!ok) return;
  if (state.space.state === "ended") {
    // The host (or a co-host) coming back after the end still sees the
    // analytics; nobody else may, so nobody else asks.
    const role = localStorage.getItem(`amphi.role.${spaceId}`);
    if (tokens.get(spaceId) && (role === "host" || role === "cohost")) refreshStats();
    return;
  }
  if (tokens.get(spaceId)) enter();
  else {
    $("join").hidden = false;
    $("name").value = localStorage.getItem("amphi.name") || "";
  }
})();
$("name").addEventListener("change", () => localStorage.setItem("amphi.name", $("name").value.trim()));
