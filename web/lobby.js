import { api, tokens, say, describe } from "/assets/api.js";

const status = document.getElementById("status");
const admin = document.getElementById("admin");
admin.value = localStorage.getItem("amphi.admin") || "";

function card(space) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = `/s/${space.id}`;
  a.textContent = space.title;
  const n = document.createElement("span");
  n.className = "count";
  n.textContent = space.state === "live"
    ? `${space.listener_count} listening · ${space.stage.length} on stage`
    : (space.scheduled_for ? new Date(space.scheduled_for).toLocaleString() : "scheduled");
  li.append(a, n);
  return li;
}

async function refresh() {
  for (const state of ["live", "scheduled"]) {
    const list = document.getElementById(state === "live" ? "live" : "scheduled");
    try {
      const { spaces } = await api("GET", `/api/v1/spaces?state=${state}`);
      list.replaceChildren(...(spaces.length ? spaces.map(card) : [Object.assign(document.createElement("li"), {
        className: "empty", textContent: state === "live" ? "Nothing live right now." : "Nothing scheduled.",
      })]));
    } catch (e) {
      say(status, describe(e), true);
    }
  }
}

document.getElementById("create").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  localStorage.setItem("amphi.admin", admin.value);
  try {
    const res = await api("POST", "/api/v1/spaces", {
      token: admin.value,
      body: {
        title: document.getElementById("title").value,
        host_name: document.getElementById("host-name").value,
        max_stage: Number(document.getElementById("max-stage").value),
        record: document.getElementById("record").checked,
      },
    });
    tokens.set(res.space.id, res.host.token);
    const link = `${location.origin}/s/${res.space.id}`;
    const p = document.getElementById("created");
    p.hidden = false;
    const a = Object.assign(document.createElement("a"), { href: link, textContent: link });
    a.dataset.testid = "space-link";
    p.replaceChildren("Created: ", a, " ");
    const copy = Object.assign(document.createElement("button"), { type: "button", textContent: "Copy link" });
    copy.addEventListener("click", () => navigator.clipboard?.writeText(link).then(() => say(status, "Link copied.")).catch(() => say(status, link)));
    p.append(copy);
    say(status, "Space created. Open it to go live.");
    refresh();
  } catch (e) {
    say(status, describe(e), true);
  }
});

refresh();
setInterval(refresh, 5000);
