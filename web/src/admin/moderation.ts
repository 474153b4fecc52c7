import { fmtTime, h, render } from "../dom.js";
import { table, type TabContext } from "./ui.js";

const EXAMPLE = {
  rules: [{ name: "spam", words: ["buy now"], action: "block", reason: "No advertising." }],
  max_links: 3,
};

export async function moderationTab(ctx: TabContext): Promise<void> {
  const [rules, flagged] = await Promise.all([ctx.api.moderationRules(), ctx.api.flagged({ state: "pending" })]);
  const app = rules.app && Object.keys(rules.app as object).length > 0 ? rules.app : EXAMPLE;
  const editor = h(
    "textarea",
    { id: "rules-json", rows: 12, spellcheck: "false", class: "code" },
    JSON.stringify(app, null, 2),
  );
  render(
    ctx.panel,
    h("h2", null, "Moderation"),
    h(
      "form",
      {
        class: "card",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          let parsed: unknown;
          try {
            parsed = JSON.parse(editor.value);
          } catch (e) {
            ctx.say(`The rules are not JSON: ${String(e)}`, "error");
            return;
          }
          void ctx.act("Save the application's rules", () => ctx.api.setModerationRules(parsed));
        },
      },
      h("label", { for: "rules-json" }, "The application's rules (JSON; each rule: name, words or patterns, action block, mask or flag, reason)"),
      editor,
      h("button", { type: "submit", class: "primary" }, "Save rules"),
    ),
    h(
      "details",
      null,
      h("summary", null, "Rules from the configuration file (read-only)"),
      h("pre", { class: "code" }, JSON.stringify(rules.file, null, 2)),
    ),
    table(
      `${flagged.flagged.length} flagged messages awaiting review`,
      ["Message", "Channel", "Sender", "Text", "Rules", "Flagged", "Review"],
      flagged.flagged.map((f) => [
        f.message.id,
        f.message.channel_id,
        f.message.sender_id ?? "",
        f.message.text,
        f.rules.join(", "),
        fmtTime(f.flagged_at),
        h(
          "span",
          { class: "actions" },
          h(
            "button",
            {
              type: "button",
              onclick: () => void ctx.act(`Approve ${f.message.id}`, () => ctx.api.reviewFlag(f.message.id, "approve")),
            },
            "Approve",
          ),
          h(
            "button",
            {
              type: "button",
              class: "danger",
              onclick: () => void ctx.act(`Remove ${f.message.id}`, () => ctx.api.reviewFlag(f.message.id, "remove")),
            },
            "Remove",
          ),
        ),
      ]),
    ),
  );
}
