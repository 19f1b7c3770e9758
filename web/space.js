import { api, tokens, say, describe } from "/assets/api.js";
import { Player } from "/assets/listen.js";
import { Mic } from "/assets/speak.js";

const spaceId = location.pathname.split("/").filter(Boolean)[1];
const $ = (id) => document.getElementById(id);
const status = $("status");
const state = { space: null, you: null, talking: {}, player: null, mic: null };
window.amphi = {
  state,
  toneProbe: (freqs) => (state.player ? state.player.probe(freqs) : freqs.map(() => -Infinity)),
};

function err(e) { say(status, describe(e), true); }

async function act(method, path, body) {
  try {
    await api(method, `/api/v1/spaces/${spaceId}${path}`, { token: tokens.get(spaceId), body });
    say(status, "");
  } catch (e) {
    err(e);
  }
}

function initials(name) {
  return name.split(/\s+/).map((w) => w[0] || "").join("").slice(0, 2).toUpperCase();
}

function button(label, onClick, testid) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (testid) b.dataset.testid = testid;
  b.addEventListener("click", onClick);
  return b;
}

function render() {
  const { space, you } = state;
  if (!space) return;
  document.title = `${space.title} — amphi`;
  $("title").textContent = space.title;
  $("meta").textContent = space.state === "live"
    ? `${space.listener_count} listening · ${space.stage.length}/${space.max_stage} on stage`
    : space.state === "scheduled" ? "Not live yet" : "Ended";
  $("live-badge").hidden = space.state !== "live";
  const mod = you && (you.role === "host" || you.role === "cohost");
  const onStage = you && you.on_stage;

  // The stage.
  $("stage").replaceChildren(...space.stage.map((m) => {
    const li = document.createElement("li");
    li.dataset.pid = m.participant_id;
    const av = document.createElement("div");
    av.className = "avatar" + ((state.talking[m.participant_id] || 0) > 20 && !m.muted ? " talking" : "");
    av.textContent = initials(m.name);
    av.setAttribute("aria-hidden", "true");
    const name = document.createElement("strong");
    name.textContent = m.name + (you && m.participant_id === you.participant_id ? " (you)" : "");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role === "cohost" ? "co-host" : m.role;
    li.append(av, name, role);
    if (m.muted) li.append(Object.assign(document.createElement("span"), { className: "mutedmark", textContent: "🔇 muted" }));
    if (mod && m.participant_id !== you.participant_id) {
      const actions = document.createElement("div");
      actions.className = "actions";
      if (!m.muted) actions.append(button("Mute", () => act("POST", `/participants/${m.participant_id}/mute`), `mute-${m.name}`));
      if (m.role !== "host") {
        actions.append(button("To audience", () => act("DELETE", `/stage/${m.participant_id}`), `demote-${m.name}`));
        if (you.role === "host") {
          actions.append(m.role === "cohost"
            ? button("Dismiss co-host", () => act("DELETE", `/cohosts/${m.participant_id}`))
            : button("Make co-host", () => act("POST", `/cohosts/${m.participant_id}`)));
        }
        actions.append(button("Remove", () => act("POST", `/participants/${m.participant_id}/remove`, { ban: false })));
        actions.append(button("Ban", () => act("POST", `/participants/${m.participant_id}/remove`, { ban: true })));
      }
      li.append(actions);
    }
    return li;
  }));

  // Raised hands (moderators act on them).
  const hands = space.hands_raised || [];
  $("hands-box").hidden = hands.length === 0;
  $("hands").replaceChildren(...hands.map((h) => {
    const li = document.createElement("li");
    li.append(Object.assign(document.createElement("span"), { textContent: `✋ ${h.name}` }));
    if (mod) li.append(button("Bring on stage", () => act("POST", `/stage/${h.participant_id}`), `accept-${h.name}`));
    return li;
  }));

  // Your controls.
  const live = space.state === "live";
  $("start").hidden = !(mod && space.state === "scheduled");
  $("end").hidden = !(you && you.role === "host" && space.state !== "ended");
  $("hand").hidden = !you || onStage || !live;
  $("hand").textContent = you && you.hand_raised ? "Lower hand" : "✋ Raise hand";
  $("mic").hidden = !(onStage && live && !state.mic);
  $("mute-self").hidden = !(onStage && live);
  $("mute-self").textContent = you && you.muted ? "Unmute" : "Mute";
  $("leave-stage").hidden = !(onStage && you.role !== "host");
  $("listen").hidden = !live;
  $("listen").textContent = state.player ? "■ Stop listening" : "▶ Listen";

  if (space.state === "ended") {
    $("room").hidden = true;
    $("ended").hidden = false;
    if (!space.record) {
      $("ended").querySelector("p").textContent = "This space was not recorded.";
      $("replay").hidden = true;
    } else if (space.replay && !$("replay").getAttribute("src")) {
      $("replay").src = space.replay.ogg;
    } else if (!space.replay) {
      say(status, "The recording is being published…");
    }
  }
  // Leaving the stage (or being moved) releases the microphone.
  if (state.mic && (!onStage || !live)) {
    state.mic.stop();
    state.mic = null;
    say(status, "You are back in the audience; your microphone was released.");
  }
  if (state.mic) state.mic.setEnabled(!(you && you.muted));
}

function floatReactions(counts) {
  for (const [emoji, n] of Object.entries(counts || {})) {
    for (let i = 0; i < Math.min(n, 5); i++) {
      const s = document.createElement("span");
      s.textContent = emoji;
      s.style.left = `${Math.random() * 40}px`;
      s.style.animationDelay = `${i * 0.15}s`;
      $("floats").append(s);
      setTimeout(() => s.remove(), 2600);
    }
  }
}

function connectEvents() {
  const token = tokens.get(spaceId);
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/spaces/${spaceId}/events?token=${encodeURIComponent(token)}`);
  let closedByServer = false;
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "snapshot" || m.type === "update") {
      state.space = m.space;
      state.you = m.you;
      state.talking = m.talking || {};
      floatReactions(m.reactions);
      render();
    } else if (m.type === "removed") {
      closedByServer = true;
      state.mic?.stop();
      state.mic = null;
      state.player?.stop();
      state.player = null;
      tokens.drop(spaceId);
      $("room").hidden = true;
      say(status, m.banned ? "You were removed and banned from this space." : "You were removed from this space.", true);
    } else if (m.type === "ended") {
      closedByServer = true;
      state.space = { ...state.space, state: "ended" };
      state.mic?.stop();
      state.mic = null;
      state.player?.stop();
      state.player = null;
      render();
      // The replay is published moments after the end: poll until it is.
      const poll = setInterval(async () => {
        await loadSpace();
        if (state.space && (state.space.replay || !state.space.record)) {
          clearInterval(poll);
          say(status, "");
        }
      }, 1000);
    }
  };
  ws.onclose = () => {
    if (!closedByServer) setTimeout(connectEvents, 1000);
  };
}

async function loadSpace() {
  try {
    state.space = await api("GET", `/api/v1/spaces/${spaceId}`);
    render();
  } catch (e) {
    err(e);
  }
}

async function enter() {
  $("join").hidden = true;
  $("room").hidden = false;
  connectEvents();
}

$("join").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const res = await api("POST", `/api/v1/spaces/${spaceId}/join`, { body: { name: $("name").value } });
    tokens.set(spaceId, res.token);
    enter();
  } catch (e) {
    err(e);
  }
});

$("listen").addEventListener("click", async () => {
  if (state.player) {
    state.player.stop();
    state.player = null;
    $("live-badge").querySelector("#delay").textContent = "";
    render();
    return;
  }
  const p = new Player(spaceId, tokens.get(spaceId), {
    fallbackEl: $("fallback"),
    onDelay: (ms) => { $("delay").textContent = `· ${(ms / 1000).toFixed(1)} s`; },
    onStatus: (text, bad) => say(status, text, bad),
  });
  state.player = p;
  render();
  try {
    await p.start();
  } catch (e) {
    state.player = null;
    err(e);
    render();
  }
});

$("hand").addEventListener("click", () => act(state.you && state.you.hand_raised ? "DELETE" : "POST", "/hand"));
$("start").addEventListener("click", () => act("POST", "/start"));
$("end").addEventListener("click", () => {
  if (confirm("End this space for everyone?")) act("POST", "/end");
});
$("leave-stage").addEventListener("click", () => act("DELETE", `/stage/${state.you.participant_id}`));
$("mute-self").addEventListener("click", () => act("POST", `/participants/${state.you.participant_id}/${state.you.muted ? "unmute" : "mute"}`));
$("mic").addEventListener("click", async () => {
  const mic = new Mic(spaceId, tokens.get(spaceId), $("return-audio"));
  state.mic = mic;
  $("mic").disabled = true;
  try {
    await mic.start();
    say(status, "You are live on stage.");
  } catch (e) {
    state.mic = null;
    if (e && e.name === "NotAllowedError") say(status, "Microphone access was refused: allow it in the browser to speak.", true);
    else err(e);
  } finally {
    $("mic").disabled = false;
    render();
  }
});
$("leave").addEventListener("click", () => {
  state.mic?.stop();
  state.player?.stop();
  location.href = "/";
});
document.querySelectorAll("[data-emoji]").forEach((b) =>
  b.addEventListener("click", () => act("POST", "/reactions", { emoji: b.dataset.emoji })));

loadSpace();
if (tokens.get(spaceId)) enter();
else $("join").hidden = false;
