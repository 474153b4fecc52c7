// The admin console (master API token): users, channels, bots, providers (never their keys), moderation
// rules and flagged messages, webhook endpoints with their deliveries and dead letters, and token usage
// per bot, user and day as a table and a chart.

import { ConfabApi } from "@confab/client";

import { announce, errorText, h, render } from "../dom.js";
import { loadAdminToken, saveAdminToken } from "../session.js";
import { botsTab } from "./bots.js";
import { moderationTab } from "./moderation.js";
import { providersTab } from "./providers.js";
import { channelsTab, usersTab } from "./people.js";
import { usageTab } from "./usage.js";
import type { TabContext } from "./ui.js";
import { webhooksTab } from "./webhooks.js";

export interface Tab {
  id: string;
  label: string;
  render: (ctx: TabContext) => Promise<void>;
}

const TABS: Tab[] = [
  { id: "users", label: "Users", render: usersTab },
  { id: "channels", label: "Channels", render: channelsTab },
  { id: "bots", label: "Bots", render: botsTab },
  { id: "providers", label: "Providers", render: providersTab },
  { id: "moderation", label: "Moderation", render: moderationTab },
  { id: "webhooks", label: "Webhooks", render: webhooksTab },
  { id: "usage", label: "Usage", render: usageTab },
];

export async function startAdmin(root: HTMLElement): Promise<void> {
  const token = loadAdminToken();
  if (!token) return adminSignIn(root);
  const api = new ConfabApi({ token });
  try {
    await api.listBots();
  } catch (e) {
    saveAdminToken(null);
    return adminSignIn(root, `That token is not the master API token (${errorText(e)}).`);
  }
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const panel = h("section", { class: "panel", role: "tabpanel", tabindex: "0" });
  const tabButtons = TABS.map((t) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `tab-${t.id}`,
        "aria-controls": "admin-panel",
        "data-tab": t.id,
        onclick: () => void show(t.id),
        onkeydown: (ev: KeyboardEvent) => {
          const i = TABS.findIndex((x) => x.id === t.id);
          const next = ev.key === "ArrowRight" ? i + 1 : ev.key === "ArrowLeft" ? i - 1 : null;
          if (next !== null) {
            ev.preventDefault();
            const target = TABS[(next + TABS.length) % TABS.length];
            void show(target.id);
            document.getElementById(`tab-${target.id}`)?.focus();
          }
        },
      },
      t.label,
    ),
  );
  panel.id = "admin-panel";
  const say = (text: string, kind: "info" | "error" = "info") => announce(status, text, kind);

  async function show(id: string): Promise<void> {
    const tab = TABS.find((t) => t.id === id) ?? TABS[0];
    history.replaceState(null, "", `/admin#${tab.id}`);
    for (const b of tabButtons) {
      const on = b.dataset.tab === tab.id;
      b.setAttribute("aria-selected", String(on));
      b.tabIndex = on ? 0 : -1;
    }
    panel.setAttribute("aria-labelledby", `tab-${tab.id}`);
    const ctx: TabContext = {
      api,
      panel,
      say,
      act: async (what, f, rerender = true) => {
        try {
          await f();
          say(`${what}: done.`);
          if (rerender) await tab.render(ctx);
        } catch (e) {
          say(`${what} failed: ${errorText(e)}`, "error");
        }
      },
    };
    render(panel, h("p", { class: "hint" }, "Loading…"));
    try {
      await tab.render(ctx);
    } catch (e) {
      render(panel, h("p", { class: "error", role: "alert" }, `Cannot load ${tab.label}: ${errorText(e)}`));
    }
  }

  render(
    root,
    h(
      "header",
      { class: "topbar" },
      h("h1", null, "Confab admin"),
      h("a", { href: "/" }, "Chat"),
      h(
        "button",
        {
          type: "button",
          onclick: () => {
            saveAdminToken(null);
            location.reload();
          },
        },
        "Sign out",
      ),
    ),
    h("nav", { class: "tabs", role: "tablist", "aria-label": "Admin sections" }, tabButtons),
    panel,
    status,
  );
  await show(location.hash.slice(1) || "users");
}

function adminSignIn(root: HTMLElement, error?: string): void {
  const input = h("input", { id: "admin-token", type: "password", required: true, autocomplete: "off" });
  render(
    root,
    h(
      "main",
      { class: "signin" },
      h("h1", null, "Confab admin"),
      h(
        "form",
        {
          class: "card",
          onsubmit: (ev: Event) => {
            ev.preventDefault();
            saveAdminToken(input.value.trim());
            location.reload();
          },
        },
        h("label", { for: "admin-token" }, "Master API token"),
        h(
          "p",
          { class: "hint" },
          "Printed once at the server's first start and kept in the data directory's master_token file (or CONFAB_API_TOKEN).",
        ),
        input,
        h("button", { type: "submit", class: "primary" }, "Sign in"),
      ),
      error ? h("p", { class: "error", role: "alert" }, error) : null,
    ),
  );
  input.focus();
}
