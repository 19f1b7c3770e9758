// The embeddable player (/embed/{id}): the space's state and listener
// count from the public API every 5 s; Listen plays the Ogg stream; once
// ended, the replay. Works inside any site's iframe.
const id = document.body.dataset.space;
const $ = (x) => document.getElementById(x);
let playing = false;

async function refresh() {
  let s;
  try {
    const r = await fetch(`/api/v1/spaces/${id}`);
    if (!r.ok) return;
    s = await r.json();
  } catch { return; }
  const live = s.state === "live";
  $("state").textContent = live ? "● LIVE" : s.state === "scheduled" ? "Scheduled" : "Ended";
  $("state").className = `pill ${s.state}`;
  $("count").textContent = live ? `${s.listener_count} listening` : "";
  $("play").hidden = !live;
  if (!live && playing) stop();
  if (s.state === "ended" && s.replay && !$("replay").getAttribute("src")) {
    $("replay").src = s.replay.ogg;
    $("replay").hidden = false;
  }
}

function stop() {
  playing = false;
  $("live").pause();
  $("live").removeAttribute("src");
  $("live").load();
  $("play").textContent = "▶ Listen live";
}

$("play").addEventListener("click", async () => {
  if (playing) { stop(); return; }
  playing = true;
  $("play").textContent = "■ Stop";
  // The default connect burst fills <audio>'s start-up buffer at once.
  $("live").src = `/spaces/${id}/live.opus`;
  try { await $("live").play(); } catch { stop(); }
});

refresh();
setInterval(refresh, 5000);
