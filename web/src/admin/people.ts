import type { Channel, User } from "@confab/client";

import { fmtTime, h, render } from "../dom.js";
import { handOff } from "../session.js";
import { field, table, type TabContext } from "./ui.js";

export async function usersTab(ctx: TabContext): Promise<void> {
  const users: User[] = [];
  let after: string | undefined;
  do {
    const page = await ctx.api.listUsers({ after, limit: 200 });
    users.push(...page.items);
    after = page.next;
  } while (after && users.length < 2000);
  const [idLabel, id] = field("user-id", "User id", { required: true, pattern: "[A-Za-z0-9_.\\-@]+" });
  const [nickLabel, nick] = field("user-nickname", "Nickname");
  render(
    ctx.panel,
    h("h2", null, "Users"),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          void ctx.act(`Create user ${id.value}`, () =>
            ctx.api.createUser({ id: id.value.trim(), nickname: nick.value.trim() || undefined }),
          );
        },
      },
      idLabel,
      id,
      nickLabel,
      nick,
      h("button", { type: "submit", class: "primary" }, "Create user"),
    ),
    table(
      `${users.length} users`,
      ["Id", "Nickname", "Kind", "Online", "Created", "Actions"],
      users.map((u) => [
        u.id,
        u.nickname,
        u.is_bot ? "bot" : "user",
        u.online ? "yes" : "no",
        fmtTime(u.created_at),
        u.is_bot
          ? null
          : h(
              "span",
              { class: "actions" },
              h(
                "button",
                {
                  type: "button",
                  onclick: () =>
                    void ctx.act(
                      `Open chat as ${u.id}`,
                      async () => {
                        const s = await ctx.api.issueSession(u.id);
                        handOff({ token: s.token, user_id: s.user_id });
                      },
                      false,
                    ),
                },
                `Open chat as ${u.id}`,
              ),
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  onclick: () => {
                    if (confirm(`Delete user ${u.id}?`)) void ctx.act(`Delete ${u.id}`, () => ctx.api.deleteUser(u.id));
                  },
                },
                "Delete",
              ),
            ),
      ]),
    ),
  );
}

export async function channelsTab(ctx: TabContext): Promise<void> {
  const channels: Channel[] = [];
  let after: string | undefined;
  do {
    const page = await ctx.api.listChannels({ after, limit: 200 });
    channels.push(...page.items);
    after = page.next;
  } while (after && channels.length < 2000);
  const [idLabel, id] = field("channel-id", "Channel id (optional)");
  const [nameLabel, name] = field("channel-name", "Name");
  const [membersLabel, members] = field("channel-members", "Members (comma-separated ids)", { required: true });
  render(
    ctx.panel,
    h("h2", null, "Channels"),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          void ctx.act("Create channel", () =>
            ctx.api.createChannel({
              kind: "group",
              id: id.value.trim() || undefined,
              name: name.value.trim(),
              user_ids: members.value.split(/[\s,]+/).filter(Boolean),
            }),
          );
        },
      },
      idLabel,
      id,
      nameLabel,
      name,
      membersLabel,
      members,
      h("button", { type: "submit", class: "primary" }, "Create group"),
    ),
    table(
      `${channels.length} channels`,
      ["Id", "Kind", "Name", "Members", "Messages", "Last message", "Actions"],
      channels.map((c) => [
        c.id,
        c.kind,
        c.name,
        c.member_count,
        c.last_seq,
        c.last_message_at ? fmtTime(c.last_message_at) : "",
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: () => {
              if (confirm(`Delete channel ${c.id} and its messages?`)) {
                void ctx.act(`Delete ${c.id}`, () => ctx.api.deleteChannel(c.id));
              }
            },
          },
          "Delete",
        ),
      ]),
    ),
  );
}
