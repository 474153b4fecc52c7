import type { EndpointView } from "@confab/client";

import { fmtTime, h, render } from "../dom.js";
import { field, table, type TabContext } from "./ui.js";

export async function webhooksTab(ctx: TabContext): Promise<void> {
  const endpoints = await ctx.api.listEndpoints();
  const [urlLabel, url] = field("endpoint-url", "URL", { type: "url", required: true });
  const [eventsLabel, events] = field("endpoint-events", "Events (comma-separated; empty: all)", {
    placeholder: "message.*, bot_reply.completed",
  });
  const secretBox = h("div", { "aria-live": "polite", "data-secret": "" });
  const detail = h("div");
  render(
    ctx.panel,
    h("h2", null, "Webhooks"),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          void ctx.act(
            "Add endpoint",
            async () => {
              const created = await ctx.api.createEndpoint({
                url: url.value.trim(),
                events: events.value.split(/[\s,]+/).filter(Boolean),
              });
              await webhooksTab(ctx);
              const box = ctx.panel.querySelector("[data-secret]");
              if (box) {
                render(
                  box,
                  h(
                    "p",
                    { class: "secret" },
                    `Signing secret of ${created.id} (shown once): `,
                    h("code", null, created.secret),
                  ),
                );
              }
            },
            false,
          );
        },
      },
      urlLabel,
      url,
      eventsLabel,
      events,
      h("button", { type: "submit", class: "primary" }, "Add endpoint"),
    ),
    secretBox,
    table(
      `${endpoints.length} endpoints`,
      ["Id", "URL", "Format", "Events", "Enabled", "Pending", "Delivered", "Failed attempts", "Dead letters", "Actions"],
      endpoints.map((e) => [
        e.id,
        e.url || "(per event: each bot's callback URL)",
        e.format,
        e.events.join(", ") || "all",
        e.enabled ? "yes" : "no",
        e.pending,
        e.delivered,
        e.failed_attempts,
        e.dead_lettered,
        h(
          "span",
          { class: "actions" },
          h("button", { type: "button", onclick: () => void showDetail(ctx, detail, e) }, `Deliveries of ${e.id}`),
          e.format === "standard"
            ? h(
                "button",
                {
                  type: "button",
                  onclick: () =>
                    void ctx.act(`${e.enabled ? "Disable" : "Enable"} ${e.id}`, () =>
                      ctx.api.updateEndpoint(e.id, { enabled: !e.enabled }),
                    ),
                },
                e.enabled ? "Disable" : "Enable",
              )
            : null,
          e.format === "standard"
            ? h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  onclick: () => {
                    if (confirm(`Delete endpoint ${e.id}?`)) void ctx.act(`Delete ${e.id}`, () => ctx.api.deleteEndpoint(e.id));
                  },
                },
                "Delete",
              )
            : null,
        ),
      ]),
    ),
    detail,
  );
}

async function showDetail(ctx: TabContext, el: HTMLElement, e: EndpointView): Promise<void> {
  const [attempts, letters] = await Promise.all([ctx.api.attempts(e.id), ctx.api.deadLetters(e.id)]);
  render(
    el,
    h("h3", null, `Deliveries of ${e.id}`),
    table(
      "Latest attempts",
      ["Event", "Type", "At", "Duration", "Status", "Error"],
      attempts.map((a) => [
        a.event_id,
        a.event_type,
        fmtTime(a.at),
        `${a.duration_ms} ms`,
        a.status ?? "",
        a.delivered ? "delivered" : (a.error ?? "failed"),
      ]),
    ),
    table(
      "Dead letters",
      ["Event", "Type", "Channel", "Attempts", "Last error", "Failed", "Actions"],
      letters.map((d) => [
        d.event_id,
        d.event_type,
        d.channel_id ?? "",
        d.attempts,
        d.last_error,
        fmtTime(d.failed_at),
        h(
          "button",
          {
            type: "button",
            onclick: () =>
              void ctx.act(
                `Redeliver ${d.event_id}`,
                async () => {
                  const a = await ctx.api.redeliver(e.id, d.event_id);
                  if (!a.delivered) throw new Error(a.error ?? "refused again");
                  await showDetail(ctx, el, e);
                },
                false,
              ),
          },
          "Redeliver",
        ),
      ]),
    ),
  );
}
