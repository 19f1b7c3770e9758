// An origin's death in real headless Chromium (run by scripts/e2e-heal):
// three nodes on NATS. The host's page is on A (the space is created and
// mixed there, the host says 440 Hz); a guest's page is on B, brought on
// stage, speaking 880 Hz through B (its WHIP call forwarded to A); a
// listener's page is on C. A is killed -9: the guest's page notices that
// its WHIP session is gone and publishes again through B by itself, a
// survivor takes the space over, and the listener on C hears the guest
// again without a reload. Prints the kill → 880 Hz heard time.
import { launch, until as poll, probe, heard, joinAndListen, createSpace } from "./chromium.mjs";

const { BASE_A, BASE_B, BASE_C, PID_A, ADMIN, WAVS } = process.env;
const step = (s) => console.log(`-- ${s}`);

const browser = (wav) => launch({ wav });

async function page(b, who) {
  const p = await (await b.newContext()).newPage();
  p.on("pageerror", (e) => console.error(`   ${who}: uncaught: ${e.message}`));
  p.on("dialog", (d) => d.accept());
  p.setDefaultTimeout(15000);
  return p;
}

// Polled every 100 ms: the kill → heard times are measured with it.
const until = (what, fn, ms = 15000) => poll(what, fn, ms, 100);

const status = (p) => p.evaluate(() => document.getElementById("status").textContent);

const hostB = await browser(`${WAVS}/host.wav`);
const guestB = await browser(`${WAVS}/guest.wav`);
try {
  step("1. the host creates a space on A and speaks; a guest on B is brought on stage and speaks");
  const host = await page(hostB, "host");
  const link = await createSpace(host, BASE_A, ADMIN, "Heal journey", "Hana");
  await host.goto(BASE_A + link);
  await host.click("[data-testid=go-live]");
  await host.click("[data-testid=mic]");
  await until("the host publishes", async () => (await status(host)).includes("live on stage"));
  const guest = await page(guestB, "guest");
  await joinAndListen(guest, BASE_B + link, "Gus");
  await guest.click("[data-testid=hand]");
  await host.click("[data-testid=accept-Gus]");
  await guest.click("[data-testid=mic]");
  await until("the guest publishes through B", async () => (await status(guest)).includes("live on stage"));

  step("2. a listener on C hears the guest's 880 Hz");
  const ear = await page(hostB, "listener");
  await joinAndListen(ear, BASE_C + link, "Lia");
  await until("the listener hears 880 Hz", async () => heard((await probe(ear))[1]), 20000);

  step("3. A (the origin) is killed -9");
  process.kill(Number(PID_A), "SIGKILL");
  const t0 = Date.now();
  await until("the listener stops hearing the guest", async () => !heard((await probe(ear))[1]), 10000);
  await until("the guest's page reconnects by itself", async () => (await status(guest)).includes("live on stage again"), 30000);
  const reconnected = (Date.now() - t0) / 1000;
  await until("the listener on C hears the guest again, without a reload", async () => heard((await probe(ear))[1]), 20000);
  const healed = (Date.now() - t0) / 1000;
  console.log(`   guest's page republished ${reconnected.toFixed(2)} s after the kill; listener on C hears 880 Hz again after ${healed.toFixed(2)} s`);
  console.log("heal journey: ok");
} finally {
  await hostB.close();
  await guestB.close();
}
