import type { Bot, BotSettings, BotTrigger, ProviderView } from "@confab/client";

import { h, render } from "../dom.js";
import { table, type TabContext } from "./ui.js";

const DEFAULTS: Partial<BotSettings> = {
  system_prompt: "You are a helpful assistant in a chat. Answer briefly.",
  max_output_tokens: 512,
  context_messages: 20,
  context_tokens: 3000,
  trigger: "mentions",
  summonable: false,
  reply_in_threads: true,
};

/** The trigger values the server knows, with their labels. */
const TRIGGERS: [BotTrigger, string][] = [
  ["mentions", "Mentions"],
  ["mentions_and_commands", "Mentions and commands"],
  ["all_messages", "Every message"],
];

export async function botsTab(ctx: TabContext): Promise<void> {
  const [bots, providers] = await Promise.all([ctx.api.listBots(), ctx.api.listProviders()]);
  const form = h("div");
  const edit = (bot: Bot | null) => render(form, botForm(ctx, bot, providers));
  render(
    ctx.panel,
    h("h2", null, "Bots"),
    h("button", { type: "button", class: "primary", onclick: () => edit(null) }, "New bot"),
    form,
    table(
      `${bots.length} bots`,
      ["Id", "Nickname", "Provider", "Model", "Trigger", "Actions"],
      bots.map((b) => [
        b.id,
        b.nickname,
        b.settings?.provider || "(callback only)",
        b.settings?.model || "(provider's)",
        b.settings?.trigger ?? "",
        h(
          "span",
          { class: "actions" },
          h("button", { type: "button", onclick: () => edit(b) }, `Edit ${b.id}`),
          h(
            "button",
            {
              type: "button",
              class: "danger",
              onclick: () => {
                if (confirm(`Delete bot ${b.id}?`)) void ctx.act(`Delete ${b.id}`, () => ctx.api.deleteBot(b.id));
              },
            },
            "Delete",
          ),
        ),
      ]),
    ),
  );
}

function botForm(ctx: TabContext, bot: Bot | null, providers: ProviderView[]): HTMLElement {
  const s: Partial<BotSettings> = { ...DEFAULTS, ...(bot?.settings ?? {}) };
  const input = (id: string, label: string, attrs: Record<string, unknown>) => [
    h("label", { for: `bot-${id}` }, label),
    h("input", { id: `bot-${id}`, name: id, ...attrs }),
  ];
  const form: HTMLFormElement = h(
    "form",
    {
      class: "card bot-form",
      "aria-label": bot ? `Edit bot ${bot.id}` : "New bot",
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        const v = (name: string) => (form.elements.namedItem(name) as HTMLInputElement).value.trim();
        const checked = (name: string) => (form.elements.namedItem(name) as HTMLInputElement).checked;
        const temperature = v("temperature");
        const settings: Partial<BotSettings> = {
          ...(bot?.settings ?? {}),
          provider: v("provider"),
          model: v("model"),
          system_prompt: (form.elements.namedItem("system_prompt") as HTMLTextAreaElement).value,
          temperature: temperature === "" ? null : Number(temperature),
          max_output_tokens: Number(v("max_output_tokens")),
          trigger: v("trigger") as BotSettings["trigger"],
          context_messages: Number(v("context_messages")),
          context_tokens: Number(v("context_tokens")),
          reply_in_threads: checked("reply_in_threads"),
          summonable: checked("summonable"),
          message_context: checked("message_context"),
          callback_url: v("callback_url"),
        };
        const nickname = v("nickname");
        void ctx.act(bot ? `Save bot ${bot.id}` : `Create bot ${v("id")}`, () =>
          bot
            ? ctx.api.updateBot(bot.id, { nickname, settings })
            : ctx.api.createBot({ id: v("id"), nickname, settings }),
        );
      },
    },
    h("h3", null, bot ? `Edit ${bot.id}` : "New bot"),
    input("id", "Bot id", { required: true, value: bot?.id ?? "", readonly: bot ? true : undefined }),
    input("nickname", "Nickname", { value: bot?.nickname ?? "" }),
    h("label", { for: "bot-provider" }, "Provider"),
    h(
      "select",
      { id: "bot-provider", name: "provider" },
      h("option", { value: "" }, "(none: the callback answers)"),
      providers.map((p) => h("option", { value: p.name, selected: p.name === s.provider ? true : undefined }, p.name)),
    ),
    input("model", "Model (empty: the provider's)", { value: s.model ?? "" }),
    h("label", { for: "bot-system_prompt" }, "System prompt"),
    h("textarea", { id: "bot-system_prompt", name: "system_prompt", rows: 4 }, s.system_prompt ?? ""),
    input("temperature", "Temperature (empty: the provider's default)", {
      type: "number",
      step: "0.1",
      min: "0",
      max: "2",
      value: s.temperature ?? "",
    }),
    input("max_output_tokens", "Output cap (tokens)", { type: "number", min: "1", value: s.max_output_tokens }),
    h("label", { for: "bot-trigger" }, "Trigger in groups"),
    h(
      "select",
      { id: "bot-trigger", name: "trigger" },
      TRIGGERS.map(([value, label]) => h("option", { value, selected: s.trigger === value ? true : undefined }, label)),
      // A value this console does not know yet stays as it is rather than becoming the first option.
      s.trigger && !TRIGGERS.some(([value]) => value === s.trigger)
        ? h("option", { value: s.trigger, selected: true }, s.trigger)
        : null,
    ),
    input("context_messages", "Context: recent messages", { type: "number", min: "0", value: s.context_messages }),
    input("context_tokens", "Context: input tokens", { type: "number", min: "0", value: s.context_tokens }),
    h(
      "label",
      { class: "check" },
      h("input", { type: "checkbox", name: "reply_in_threads", checked: s.reply_in_threads }),
      " Reply to follow-ups in its threads",
    ),
    h(
      "label",
      { class: "check" },
      h("input", { type: "checkbox", name: "summonable", checked: s.summonable }),
      " May be summoned where it is not a member (a user mentions it there)",
    ),
    h(
      "label",
      { class: "check" },
      h("input", { type: "checkbox", name: "message_context", checked: s.message_context }),
      " Accept per-message context from the application",
    ),
    input("callback_url", "Callback URL (optional)", { type: "url", value: s.callback_url ?? "" }),
    h("button", { type: "submit", class: "primary" }, bot ? "Save" : "Create bot"),
  );
  return form;
}
