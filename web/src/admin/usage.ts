import type { UsageRow } from "@confab/client";

import { h, render } from "../dom.js";
import { field, table, type TabContext } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";

function day(offset: number): string {
  return new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
}

export async function usageTab(ctx: TabContext, range?: { from: string; to: string }): Promise<void> {
  const r = range ?? { from: day(-13), to: day(0) };
  const rows = await ctx.api.usage(r);
  const [fromLabel, from] = field("usage-from", "From", { type: "date", value: r.from });
  const [toLabel, to] = field("usage-to", "To", { type: "date", value: r.to });
  // One row per day, bot and user (the API splits by channel too).
  const grouped = new Map<string, UsageRow>();
  for (const u of rows) {
    const key = `${u.day}|${u.bot_id}|${u.user_id}`;
    const g = grouped.get(key) ?? { ...u, channel_id: "", prompt_tokens: 0, completion_tokens: 0, replies: 0 };
    g.prompt_tokens += u.prompt_tokens;
    g.completion_tokens += u.completion_tokens;
    g.replies += u.replies;
    grouped.set(key, g);
  }
  const list = [...grouped.values()].sort((a, b) => a.day.localeCompare(b.day) || a.bot_id.localeCompare(b.bot_id));
  render(
    ctx.panel,
    h("h2", null, "Usage"),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          void usageTab(ctx, { from: from.value, to: to.value });
        },
      },
      fromLabel,
      from,
      toLabel,
      to,
      h("button", { type: "submit" }, "Show"),
    ),
    chart(list, r.from, r.to),
    table(
      "Tokens per day, bot and user",
      ["Day", "Bot", "User", "Replies", "Prompt tokens", "Completion tokens", "Total"],
      list.map((u) => [
        u.day,
        u.bot_id,
        u.user_id,
        u.replies,
        u.prompt_tokens,
        u.completion_tokens,
        u.prompt_tokens + u.completion_tokens,
      ]),
    ),
  );
}

/** Total tokens per day, one stacked bar per day, a colour per bot. */
function chart(rows: UsageRow[], from: string, to: string): Element {
  const days: string[] = [];
  for (let t = Date.parse(from); t <= Date.parse(to) && days.length < 92; t += 86_400_000) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  const bots = [...new Set(rows.map((r) => r.bot_id))].sort();
  const totals = new Map<string, Map<string, number>>();
  for (const r of rows) {
    const byBot = totals.get(r.day) ?? new Map<string, number>();
    byBot.set(r.bot_id, (byBot.get(r.bot_id) ?? 0) + r.prompt_tokens + r.completion_tokens);
    totals.set(r.day, byBot);
  }
  const max = Math.max(1, ...[...totals.values()].map((m) => [...m.values()].reduce((a, b) => a + b, 0)));
  const width = 640;
  const height = 200;
  const barW = width / Math.max(1, days.length);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("class", "chart");
  const summary = days.map((d) => `${d}: ${sum(totals.get(d))}`).join("; ");
  svg.setAttribute("aria-label", `Tokens per day. ${summary}`);
  days.forEach((d, i) => {
    let y = height;
    bots.forEach((b, j) => {
      const v = totals.get(d)?.get(b) ?? 0;
      if (v === 0) return;
      const hgt = (v / max) * (height - 10);
      y -= hgt;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", String(i * barW + 2));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(Math.max(1, barW - 4)));
      rect.setAttribute("height", String(hgt));
      rect.setAttribute("class", `series-${j % 6}`);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${d} · ${b}: ${v} tokens`;
      rect.appendChild(title);
      svg.appendChild(rect);
    });
    if (days.length <= 16 || i % Math.ceil(days.length / 8) === 0) {
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", String(i * barW + barW / 2));
      label.setAttribute("y", String(height + 14));
      label.setAttribute("text-anchor", "middle");
      label.textContent = d.slice(5);
      svg.appendChild(label);
    }
  });
  return h(
    "figure",
    { class: "chart-figure" },
    svg,
    h(
      "figcaption",
      null,
      `Tokens per day (max ${max}). `,
      bots.map((b, j) => h("span", { class: `legend series-${j % 6}` }, b)),
    ),
  );
}

function sum(m?: Map<string, number>): number {
  return m ? [...m.values()].reduce((a, b) => a + b, 0) : 0;
}
