// End-to-end test of the web app in headless Chromium (Debian's, driven by playwright-core; never a
// downloaded browser). Run by the Rust test `web::chat_end_to_end_in_chromium`, which starts Confab with a
// fake LLM provider and a bot `helper`, then runs this with:
//   CONFAB_URL       the server, e.g. http://127.0.0.1:41234
//   CONFAB_MASTER    the master API token
//   CONFAB_ARTIFACTS where screenshots go
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   CONFAB_BOT       the bot to mention (default helper)
//   CONFAB_PROVIDER  the provider of the bot the admin creates (default fake)
// The same flow runs against the real built-in model by hand (docs/web.md): a server started with
// `serve`, CONFAB_BOT=assistant CONFAB_PROVIDER=builtin.
//
// Two users in a group with the bot; one mentions the bot (picked from the autocomplete with the keyboard);
// both see the reply stream in; the other presses Stop and both see `stopped`; a reload restores the
// history; the admin creates a bot in the console (trigger mentions and commands, summonable), which keeps
// its settings through a reload and a save, and it appears in the mention list.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);

const base = process.env.CONFAB_URL;
const master = process.env.CONFAB_MASTER;
const artifacts = process.env.CONFAB_ARTIFACTS ?? "e2e-artifacts";
const bot = process.env.CONFAB_BOT ?? "helper";
const provider = process.env.CONFAB_PROVIDER ?? "fake";
const run = Date.now().toString(36);
const channel = `team-${run}`;
const newBot = `poet-${run}`;
assert.ok(base && master, "CONFAB_URL and CONFAB_MASTER are required");
mkdirSync(artifacts, { recursive: true });

async function api(method, path, body, { exists = false } = {}) {
  const r = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${master}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (exists && r.status === 409) return undefined;
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

const step = (name) => console.log(`e2e: ${name}`);

/** axe-core's audit of the page as it is; serious and critical findings fail the test. */
async function accessible(page, what) {
  // Evaluated over the DevTools protocol: the page's CSP (rightly) refuses injected script tags.
  await page.evaluate(readFileSync(require.resolve("axe-core/axe.min.js"), "utf8"));
  const result = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`),
    [],
    `${what}: accessibility violations`,
  );
}

// ---- the people and the group ----
for (const [id, nickname] of [
  ["alice", "Alice"],
  ["bob", "Bob"],
]) {
  await api("POST", "/users", { id, nickname }, { exists: true });
}
await api("POST", "/channels", { kind: "group", id: channel, name: "Team", user_ids: ["alice", "bob", bot] });
await api("POST", `/channels/${channel}/messages`, { sender_id: "bob", text: "Welcome to the team channel." });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/** A page signed in as `user` (a session minted by the application, as the admin console does). */
async function signedIn(user) {
  const { token } = await api("POST", `/users/${user}/sessions`);
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  await context.addInitScript(
    ([t, u]) => {
      if (!sessionStorage.getItem("confab.session")) {
        sessionStorage.setItem("confab.session", JSON.stringify({ token: t, user_id: u }));
      }
    },
    [token, user],
  );
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`${user}: page error: ${e.message}`));
  await page.goto(`${base}/#c=${channel}`);
  await page.getByRole("heading", { name: "Team" }).waitFor();
  await page.getByText("Welcome to the team channel.").waitFor();
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
const botReply = (page) => page.locator(".message.bot").last();

try {
  step("two users open the group");
  const alice = await signedIn("alice");
  const bob = await signedIn("bob");
  await shot(alice, "01-alice-opened");

  step("alice mentions the bot through the autocomplete, with the keyboard");
  const box = alice.getByRole("textbox", { name: "Message" });
  await box.click();
  await box.pressSequentially(`@${bot.slice(0, 3)}`);
  await alice.getByRole("option", { name: new RegExp(`@${bot}`) }).waitFor();
  await shot(alice, "02-mention-list");
  await box.press("Enter");
  assert.equal(await box.inputValue(), `@${bot} `);
  await box.pressSequentially("please tell us a long story");
  await box.press("Enter");
  await alice.locator(".message.mine", { hasText: "please tell us a long story" }).waitFor();

  step("both see the reply stream in");
  for (const page of [alice, bob]) {
    await botReply(page).locator(".reply-state.generating").waitFor();
  }
  // The text seen at two moments while generating: it grows.
  const grows = async (page) => {
    const text = () => botReply(page).locator(".text").textContent();
    const deadline = Date.now() + 20_000;
    let first = "";
    for (;;) {
      assert.ok(Date.now() < deadline, "the reply grows while generating");
      const now = (await text()) ?? "";
      const generating = (await botReply(page).getAttribute("data-state")) === "generating";
      assert.ok(generating, "still generating while watched");
      if (!first && now.length > 10 && !now.startsWith("Thinking")) first = now;
      else if (first && now.length > first.length) return;
      await page.waitForTimeout(50);
    }
  };
  await Promise.all([grows(alice), grows(bob)]);
  await shot(bob, "03-bob-sees-streaming");

  step("bob stops the reply; both see it stopped");
  await bob.getByRole("button", { name: "Stop generating" }).click();
  for (const page of [alice, bob]) {
    await page.locator(".message.bot[data-state='stopped'] .reply-state.stopped").waitFor();
  }
  const stoppedText = await botReply(alice).locator(".text").textContent();
  assert.ok(stoppedText.length > 10, "the partial text is kept");
  await shot(alice, "04-alice-sees-stopped");

  if (process.env.CONFAB_EXPECT_FAILURE === "1") {
    step("a reply that fails shows its reason to both");
    await box.pressSequentially(`@${bot} once more`);
    await box.press("Enter");
    for (const page of [alice, bob]) {
      await page.locator(".message.bot[data-state='failed'] .reply-state.failed", { hasText: "Failed" }).waitFor();
    }
    await shot(bob, "04b-bob-sees-failed");
  }

  step("an image is sent and shown to both");
  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAJElEQVR4nGNgYPj/n4GBgYGJgYGBgRGbAIiBSaHXwCiAQwMAFVoFBdwK5AsAAAAASUVORK5CYII=",
    "base64",
  );
  await alice.locator("input[type=file]").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: png });
  for (const page of [alice, bob]) {
    const img = page.getByRole("img", { name: "dot.png" });
    await img.waitFor();
    await page.waitForFunction((el) => el.complete && el.naturalWidth === 16, await img.elementHandle());
  }

  if (process.env.CONFAB_EXPECT_FAILURE === "1") {
    step("a 1:1 conversation with the bot, started from the sidebar; it answers without a mention, cut at the length limit");
    await alice.getByText("New conversation").click();
    await alice.getByLabel("With").fill(bot);
    await alice.getByRole("button", { name: "Start" }).click();
    // The composer of the channel open before is the same textbox: type only once the new one is shown.
    await alice.getByRole("heading", { name: "Helper" }).waitFor();
    const dm = alice.getByRole("textbox", { name: "Message" });
    await dm.pressSequentially("hello there");
    await dm.press("Enter");
    const dmReply = alice.locator(".message.bot:not([data-state='generating'])", { hasText: "Fine." });
    await dmReply.waitFor();
    // The fake provider never ends this reply: the server cuts it at the length limit, and the chat says so.
    await dmReply.locator(".reply-state.length", { hasText: "Cut at the length limit" }).waitFor();
    assert.equal(await dmReply.getAttribute("data-state"), "complete");
    await shot(alice, "04c-direct-with-bot");
    await alice.getByRole("button", { name: "Team" }).click();
    await alice.getByRole("heading", { name: "Team" }).waitFor();
  }

  step("the conversation passes an accessibility audit");
  await accessible(alice, "the chat");

  step("typing indicator and read receipt");
  await bob.getByRole("textbox", { name: "Message" }).pressSequentially("thanks");
  await alice.getByText("Bob is typing…").waitFor();
  await bob.getByRole("textbox", { name: "Message" }).press("Enter");
  await alice.locator(".message", { hasText: "thanks" }).waitFor();
  await bob.locator(".receipts", { hasText: "Seen by Alice" }).waitFor();

  step("a reload restores the history");
  await alice.reload();
  await alice.getByRole("heading", { name: "Team" }).waitFor();
  await alice.locator(".message.mine", { hasText: "please tell us a long story" }).waitFor();
  await alice.locator(".message.bot[data-state='stopped']").waitFor();
  assert.equal(await alice.locator(".message.bot[data-state='stopped'] .text").textContent(), stoppedText);
  await shot(alice, "05-alice-after-reload");

  step("older history loads as the user scrolls up");
  const long = `history-${run}`;
  await api("POST", "/channels", { kind: "group", id: long, name: "Long history", user_ids: ["alice", "bob"] });
  for (let i = 0; i < 75; i++) {
    await api("POST", `/channels/${long}/messages`, { sender_id: i % 2 ? "alice" : "bob", text: `old message ${i}` });
  }
  await alice.getByRole("button", { name: /Long history/ }).click();
  await alice.getByRole("heading", { name: "Long history" }).waitFor();
  await alice.getByText("old message 74").waitFor();
  assert.equal(await alice.getByText("old message 0", { exact: true }).count(), 0, "the first page is the newest");
  const log = alice.getByRole("log");
  for (let i = 0; i < 10 && (await alice.getByText("Start of the conversation").count()) === 0; i++) {
    await log.evaluate((el) => (el.scrollTop = 0));
    await alice.waitForTimeout(300);
  }
  await alice.getByText("old message 0", { exact: true }).waitFor();
  await alice.getByText("Start of the conversation").waitFor();
  const seqs = await alice.locator(".messages .message").evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, Array.from({ length: 75 }, (_, i) => i + 1), "every message once, in order");

  step("a message in another channel counts as unread there");
  await api("POST", `/channels/${long}/messages`, { sender_id: "bob", text: "one more" });
  await alice.getByText("one more").waitFor();
  await alice.getByRole("button", { name: "Team" }).click();
  await alice.getByRole("heading", { name: "Team" }).waitFor();
  await api("POST", `/channels/${long}/messages`, { sender_id: "bob", text: "unread one" });
  await api("POST", `/channels/${long}/messages`, { sender_id: "bob", text: "unread two" });
  await alice.getByRole("button", { name: /Long history/ }).getByLabel("2 unread").waitFor();
  await shot(alice, "05b-unread-badge");

  step("the admin creates a bot; it appears in the mention list");
  const adminContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const admin = await adminContext.newPage();
  await admin.goto(`${base}/admin`);
  await admin.getByLabel("Master API token").fill(master);
  await admin.getByRole("button", { name: "Sign in" }).click();
  await admin.getByRole("tab", { name: "Bots" }).click();
  await admin.getByRole("button", { name: "New bot" }).click();
  await admin.getByLabel("Bot id", { exact: true }).fill(newBot);
  await admin.getByLabel("Nickname", { exact: true }).fill("Poet");
  await admin.getByLabel("Provider", { exact: true }).selectOption(provider);
  await admin.getByLabel("System prompt").fill("You answer in verse.");
  await admin.getByLabel("Trigger in groups").selectOption({ label: "Mentions and commands" });
  await admin.getByLabel("May be summoned where it is not a member").check();
  await admin.getByRole("button", { name: "Create bot" }).click();
  await admin.getByRole("cell", { name: newBot, exact: true }).waitFor();
  await shot(admin, "06-admin-bots");
  const settings = (await api("GET", `/bots/${newBot}`)).settings;
  assert.equal(settings.system_prompt, "You answer in verse.");
  assert.equal(settings.provider, provider);
  assert.equal(settings.trigger, "mentions_and_commands");
  assert.equal(settings.summonable, true);

  step("after a reload the console's form keeps the trigger and summonable, and saving keeps them");
  await admin.reload();
  await admin.getByRole("tab", { name: "Bots" }).click();
  await admin.getByRole("button", { name: `Edit ${newBot}` }).click();
  assert.equal(await admin.getByLabel("Trigger in groups").inputValue(), "mentions_and_commands");
  assert.ok(await admin.getByLabel("May be summoned where it is not a member").isChecked());
  await accessible(admin, "the bot form");
  await admin.getByRole("button", { name: "Save", exact: true }).click();
  await admin.getByText(`Save bot ${newBot}: done.`).waitFor();
  const saved = (await api("GET", `/bots/${newBot}`)).settings;
  assert.equal(saved.trigger, "mentions_and_commands");
  assert.equal(saved.summonable, true);

  const box2 = alice.getByRole("textbox", { name: "Message" });
  await box2.click();
  await box2.pressSequentially("@po");
  await alice.getByRole("option", { name: new RegExp(`@${newBot}`) }).waitFor();
  await shot(alice, "07-new-bot-in-mentions");

  step("the admin console's other sections load");
  for (const tab of ["Users", "Channels", "Providers", "Moderation", "Webhooks", "Usage"]) {
    await admin.getByRole("tab", { name: tab }).click();
    await admin.getByRole("heading", { name: tab, level: 2 }).waitFor();
    assert.equal(await admin.getByRole("alert").count(), 0, `${tab} loads without an error`);
  }
  await admin.getByRole("tab", { name: "Usage" }).click();
  await admin.getByRole("img", { name: /Tokens per day/ }).waitFor();
  await accessible(admin, "the admin console");
  await admin.getByRole("cell", { name: bot, exact: true }).first().waitFor();
  await shot(admin, "08-admin-usage");
  await admin.getByRole("tab", { name: "Providers" }).click();
  const providersText = await admin.locator(".panel").textContent();
  assert.ok(!/sk-|secret/i.test(providersText), "no key is ever shown");

  if (process.env.CONFAB_EXPECT_DEV_LOGIN === "1") {
    step("the development login signs a new user in");
    const fresh = await (await browser.newContext()).newPage();
    await fresh.goto(base);
    await fresh.getByLabel("User id").fill(`carol-${run}`);
    await fresh.getByLabel("Nickname (optional)").fill("Carol");
    await fresh.getByRole("button", { name: "Sign in", exact: true }).click();
    await fresh.getByText("Signed in as").waitFor();
    await fresh.getByText("Carol", { exact: true }).waitFor();
    await accessible(fresh, "the chat with no conversation");
  }

  step("a narrow screen");
  await alice.setViewportSize({ width: 390, height: 800 });
  await alice.getByRole("heading", { name: "Team" }).waitFor();
  await shot(alice, "09-narrow-screen");
  console.log("e2e: passed");
} catch (e) {
  for (const [i, ctx] of browser.contexts().entries()) {
    for (const [j, page] of ctx.pages().entries()) {
      await page.screenshot({ path: join(artifacts, `failure-${i}-${j}.png`), fullPage: true }).catch(() => {});
    }
  }
  throw e;
} finally {
  await browser.close();
}
