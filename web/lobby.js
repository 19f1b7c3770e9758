// The lobby (/): live and scheduled spaces, refreshed every few seconds, and
// the form that creates a space with the operator's admin token.
import { api, tokens, say, describe } from "/assets/api.js";

const status = document.getElementById("status");
const admin = document.getElementById("admin");
admin.value = localStorage.getItem("amphi.admin") || "";
const hostName = document.getElementById("host-name");
hostName.value = localStorage.getItem("amphi.name") || hostName.value;

function card(space) {
  const li = document.createElement("li");
  const a = Object.assign(document.createElement("a"), { href: `/s/${space.id}`, className: "title" });
  if (space.state === "live") {
    const dot = Object.assign(document.createElement("span"), { className: "dot", ariaHidden: "true" });
    a.append(dot);
  }
  a.append(space.title);
  a.dataset.testid = `space-${space.id}`;
  const who = space.stage.map((m) => m.name).slice(0, 4).join(", ");
  const info = document.createElement("span");
  info.className = "count";
  info.textContent = space.state === "live"
    ? `${space.listener_count} listening${who ? ` · ${who}` : ""}`
    : space.scheduled_for ? new Date(space.scheduled_for).toLocaleString() : "not started yet";
  li.append(a, info);
  return li;
}

function empty(text) {
  return Object.assign(document.createElement("li"), { className: "empty", textContent: text });
}

let failing = false;
async function refresh() {
  try {
    const [live, scheduled] = await Promise.all([
      api("GET", "/api/v1/spaces?state=live"),
      api("GET", "/api/v1/spaces?state=scheduled"),
    ]);
    document.getElementById("live").replaceChildren(...(live.spaces.length ? live.spaces.map(card) : [empty("Nothing live right now.")]));
    document.getElementById("scheduled").replaceChildren(...(scheduled.spaces.length ? scheduled.spaces.map(card) : [empty("Nothing scheduled.")]));
    if (failing) say(status, "");
    failing = false;
  } catch (e) {
    failing = true;
    say(status, `Cannot load the spaces: ${describe(e)}`, true);
  }
}

document.getElementById("create").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const submit = ev.target.querySelector("button[type=submit]");
  submit.disabled = true;
  localStorage.setItem("amphi.admin", admin.value);
  localStorage.setItem("amphi.name", hostName.value.trim());
  try {
    const res = await api("POST", "/api/v1/spaces", {
      token: admin.value,
      body: {
        title: document.getElementById("title").value.trim(),
        host_name: hostName.value.trim() || "Host",
        max_stage: Number(document.getElementById("max-stage").value),
        record: document.getElementById("record").checked,
      },
    });
    tokens.set(res.space.id, res.host.token);
    const link = `${location.origin}/s/${res.space.id}`;
    const p = document.getElementById("created");
    const a = Object.assign(document.createElement("a"), { href: `/s/${res.space.id}`, textContent: link });
    a.dataset.testid = "space-link";
    const copy = Object.assign(document.createElement("button"), { type: "button", textContent: "Copy link" });
    copy.dataset.testid = "copy-link";
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(link);
        say(status, "Link copied.");
      } catch {
        say(status, `Copy this link: ${link}`);
      }
    });
    const open = Object.assign(document.createElement("a"), { href: `/s/${res.space.id}`, className: "button primary", textContent: "Open your space" });
    p.replaceChildren(
      Object.assign(document.createElement("span"), { textContent: "Share this link with your audience:" }),
      a, copy, open,
    );
    p.hidden = false;
    say(status, `“${res.space.title}” was created. Open it to go live.`);
    refresh();
  } catch (e) {
    say(status, e.status === 401 ? `The admin token was refused: ${describe(e)}` : describe(e), true);
  } finally {
    submit.disabled = false;
  }
});

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, 4000);
