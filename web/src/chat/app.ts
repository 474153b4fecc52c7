// The chat: channel list with unread counts, a conversation with history loaded by sequence cursors as
// the user scrolls up, live messages over the WebSocket (resumed after a reconnection), typing indicators,
// read receipts, mentions with autocomplete, files, and bot replies that stream in and can be stopped.

import {
  ApiError,
  ConfabApi,
  ConfabSocket,
  type Channel,
  type Member,
  type Message,
  type User,
} from "@confab/client";

import { announce, errorText, fmtBytes, fmtTime, h, render } from "../dom.js";
import { clearSession, type Session } from "../session.js";
import { Composer } from "./composer.js";

const PAGE = 30;
const TYPING_SHOWN_MS = 6000;

interface View {
  channel: Channel;
  members: Map<string, Member>;
  /** Held messages by sequence. */
  messages: Map<number, Message>;
  oldest: number;
  complete: boolean;
  loading: boolean;
}

export class ChatApp {
  private readonly api: ConfabApi;
  private readonly socket: ConfabSocket;
  private me!: User;
  private readonly channels = new Map<string, Channel>();
  private readonly users = new Map<string, User>();
  private bots: User[] = [];
  private botsLoading: Promise<void> | null = null;
  private view: View | null = null;
  private readonly typing = new Map<string, Map<string, ReturnType<typeof setTimeout>>>();
  private readonly els = {
    channelList: h("ul", { class: "channel-list", role: "list" }),
    conversation: h("section", { class: "conversation", "aria-label": "Conversation" }),
    state: h("span", { class: "conn", role: "status", "aria-live": "polite" }),
    status: h("p", { class: "status", role: "status", "aria-live": "polite" }),
  };
  /** The scrolling log, and the list of messages in it. */
  private messagesEl: HTMLDivElement | null = null;
  private listEl: HTMLOListElement | null = null;
  /** Rendered message items by sequence, with what they were rendered from. */
  private items = new Map<number, { key: string; el: HTMLElement }>();
  private typingEl: HTMLElement | null = null;
  private composer: Composer | null = null;

  constructor(
    private readonly root: HTMLElement,
    session: Session,
  ) {
    this.api = new ConfabApi({ token: session.token });
    this.socket = new ConfabSocket({ token: session.token });
  }

  async start(): Promise<void> {
    try {
      this.me = await this.api.me();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        clearSession();
        location.reload();
        return;
      }
      throw e;
    }
    this.users.set(this.me.id, this.me);
    this.layout();
    this.listen();
    await Promise.all([this.loadChannels(), this.loadBots()]);
    // History comes over HTTP: the conversation opens even while the socket is still (re)connecting.
    this.socket.connect().catch(() => {});
    const wanted = new URLSearchParams(location.hash.slice(1)).get("c");
    const first = (wanted && this.channels.get(wanted)) || this.sortedChannels()[0];
    if (first) await this.open(first.id);
  }

  // ---- layout ----

  private layout(): void {
    document.body.classList.add("chat-page");
    render(
      this.root,
      h(
        "header",
        { class: "topbar" },
        h("h1", null, "Confab"),
        h("span", { class: "who" }, "Signed in as ", h("strong", null, this.me.nickname || this.me.id)),
        this.els.state,
        h("a", { href: "/admin" }, "Admin console"),
        h(
          "button",
          {
            type: "button",
            onclick: () => {
              this.socket.close();
              clearSession();
              location.reload();
            },
          },
          "Sign out",
        ),
      ),
      h(
        "div",
        { class: "layout" },
        h(
          "nav",
          { class: "sidebar", "aria-label": "Channels" },
          h("h2", { class: "sr-only" }, "Channels"),
          this.newChatForm(),
          this.els.channelList,
        ),
        this.els.conversation,
      ),
      this.els.status,
    );
    render(this.els.conversation, h("p", { class: "empty" }, "Pick a conversation, or start one."));
  }

  private newChatForm(): HTMLElement {
    const who = h("input", {
      id: "new-chat-users",
      list: "known-users",
      placeholder: "alice, bob or a bot",
      autocomplete: "off",
    });
    const name = h("input", { id: "new-chat-name", placeholder: "Group name (optional)" });
    const datalist = h("datalist", { id: "known-users" });
    const refresh = () =>
      render(
        datalist,
        [...this.bots, ...this.users.values()]
          .filter((u, i, all) => u.id !== this.me.id && all.findIndex((x) => x.id === u.id) === i)
          .map((u) => h("option", { value: u.id }, u.nickname)),
      );
    who.addEventListener("focus", refresh);
    return h(
      "details",
      { class: "new-chat" },
      h("summary", null, "New conversation"),
      h(
        "form",
        {
          onsubmit: async (ev: Event) => {
            ev.preventDefault();
            const ids = who.value
              .split(/[\s,]+/)
              .map((s) => s.replace(/^@/, ""))
              .filter(Boolean);
            if (ids.length === 0) return;
            try {
              const ch =
                ids.length === 1 && !name.value.trim()
                  ? await this.api.createChannel({ kind: "direct", user_ids: ids })
                  : await this.api.createChannel({ kind: "group", name: name.value.trim(), user_ids: [this.me.id, ...ids] });
              this.upsertChannel(ch);
              who.value = name.value = "";
              await this.open(ch.id);
            } catch (e) {
              announce(this.els.status, `Cannot start the conversation: ${errorText(e)}`, "error");
            }
          },
        },
        h("label", { for: "new-chat-users" }, "With"),
        who,
        datalist,
        h("label", { for: "new-chat-name" }, "Name"),
        name,
        h("button", { type: "submit" }, "Start"),
      ),
    );
  }

  // ---- channels ----

  private async loadChannels(): Promise<void> {
    for (const c of await this.api.allChannels()) this.channels.set(c.id, c);
    this.renderChannels();
  }

  private loadBots(): Promise<void> {
    this.botsLoading ??= this.fetchBots().finally(() => (this.botsLoading = null));
    return this.botsLoading;
  }

  private async fetchBots(): Promise<void> {
    try {
      const r = await this.api.request<{ bots: User[] }>("GET", "/bots");
      this.bots = r.bots;
      for (const b of r.bots) this.users.set(b.id, b);
    } catch {
      this.bots = [];
    }
    this.composer?.setCandidates(this.mentionCandidates());
  }

  private sortedChannels(): Channel[] {
    return [...this.channels.values()].sort(
      (a, b) => (b.last_message_at ?? b.created_at) - (a.last_message_at ?? a.created_at),
    );
  }

  private channelTitle(c: Channel): string {
    if (c.name) return c.name;
    if (c.kind === "direct" && this.view?.channel.id === c.id) {
      const other = [...this.view.members.values()].find((m) => m.id !== this.me.id);
      if (other) return other.nickname || other.id;
    }
    const parts = c.id.split(".");
    if (c.kind === "direct" && parts.length === 3) {
      const other = parts[1] === this.me.id ? parts[2] : parts[1];
      return this.users.get(other)?.nickname || other;
    }
    return c.id;
  }

  private renderChannels(): void {
    render(
      this.els.channelList,
      this.sortedChannels().map((c) => {
        const unread = c.unread_count ?? 0;
        const current = this.view?.channel.id === c.id;
        return h(
          "li",
          null,
          h(
            "button",
            {
              type: "button",
              class: current ? "channel current" : "channel",
              "aria-current": current ? "true" : undefined,
              "data-channel": c.id,
              onclick: () => this.open(c.id),
            },
            h("span", { class: "name" }, this.channelTitle(c)),
            unread > 0
              ? h("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread))
              : null,
          ),
        );
      }),
    );
  }

  private upsertChannel(c: Channel): void {
    const old = this.channels.get(c.id);
    this.channels.set(c.id, { ...old, ...c, unread_count: c.unread_count ?? old?.unread_count });
    this.renderChannels();
  }

  // ---- conversation ----

  private async open(channelId: string): Promise<void> {
    const channel = this.channels.get(channelId) ?? (await this.api.getChannel(channelId));
    history.replaceState(null, "", `#c=${encodeURIComponent(channelId)}`);
    const members = new Map((await this.api.members(channelId)).map((m) => [m.id, m] as const));
    for (const m of members.values()) this.users.set(m.id, m);
    this.view = {
      channel,
      members,
      messages: new Map(),
      oldest: Number.MAX_SAFE_INTEGER,
      complete: false,
      loading: false,
    };
    this.renderConversation();
    this.renderChannels();
    const newest = await this.api.history(channelId, { limit: PAGE });
    if (this.view?.channel.id !== channelId) return;
    this.view.complete = newest.length < PAGE || newest[0]?.seq === 1;
    this.addMessages(newest);
    const last = newest.at(-1)?.seq ?? 0;
    this.socket.track(channelId, last);
    for (const m of newest) if (m.reply?.state === "generating") this.socket.seedReply(m);
    this.scrollToBottom();
    this.markRead();
    this.composer?.focus();
  }

  private renderConversation(): void {
    const v = this.view!;
    this.items = new Map();
    this.listEl = h("ol", { class: "message-list" });
    this.messagesEl = h(
      "div",
      {
        class: "messages",
        role: "log",
        "aria-label": `Messages in ${this.channelTitle(v.channel)}`,
        tabindex: "0",
        onscroll: () => {
          if (this.messagesEl && this.messagesEl.scrollTop < 60) void this.loadOlder();
        },
      },
      this.listEl,
    );
    this.typingEl = h("p", { class: "typing", "aria-live": "polite" });
    this.composer = new Composer({
      api: this.api,
      socket: this.socket,
      channelId: v.channel.id,
      candidates: this.mentionCandidates(),
      onError: (text) => announce(this.els.status, text, "error"),
      // Bots added since the page loaded show up in the list.
      onMentionQuery: () => void this.loadBots(),
    });
    render(
      this.els.conversation,
      h(
        "header",
        { class: "conv-head" },
        h("h2", null, this.channelTitle(v.channel)),
        h(
          "span",
          { class: "members" },
          [...v.members.values()].map((m) => (m.is_bot ? `${m.nickname || m.id} (bot)` : m.nickname || m.id)).join(", "),
        ),
      ),
      this.messagesEl,
      this.typingEl,
      this.composer.element,
    );
  }

  private mentionCandidates(): User[] {
    const out = new Map<string, User>();
    for (const m of this.view?.members.values() ?? []) if (m.id !== this.me.id) out.set(m.id, m);
    // Any bot answers when mentioned by name, member or not.
    for (const b of this.bots) out.set(b.id, b);
    return [...out.values()];
  }

  private async loadOlder(): Promise<void> {
    const v = this.view;
    if (!v || v.complete || v.loading || v.oldest <= 1) return;
    v.loading = true;
    try {
      const page = await this.api.history(v.channel.id, { before: v.oldest, limit: PAGE });
      if (this.view !== v) return;
      const el = this.messagesEl!;
      const fromBottom = el.scrollHeight - el.scrollTop;
      v.complete = page.length < PAGE || page[0]?.seq === 1;
      this.addMessages(page);
      el.scrollTop = el.scrollHeight - fromBottom;
    } catch (e) {
      announce(this.els.status, `Cannot load older messages: ${errorText(e)}`, "error");
    } finally {
      v.loading = false;
    }
  }

  private addMessages(list: Message[]): void {
    const v = this.view!;
    for (const m of list) {
      v.messages.set(m.seq, m);
      v.oldest = Math.min(v.oldest, m.seq);
    }
    this.renderMessages();
  }

  /**
   * Puts the held messages in order. An item is rebuilt only when its message (or its receipts) changed;
   * the others are the same nodes moved, so a new message or a read receipt costs one item, not the list.
   */
  private renderMessages(): void {
    const v = this.view!;
    const seqs = [...v.messages.keys()].sort((a, b) => a - b);
    const mineLast = [...seqs].reverse().find((s) => v.messages.get(s)!.sender_id === this.me.id);
    const items = seqs.map((seq) => {
      const m = v.messages.get(seq)!;
      const receipts = seq === mineLast ? this.readers(m).join(", ") : "";
      const key = `${m.id}|${m.updated_at}|${m.reply?.state ?? ""}|${m.deleted}|${m.text.length}|${receipts}`;
      const cached = this.items.get(seq);
      if (cached && cached.key === key) return cached.el;
      const el = this.messageItem(m, seq === mineLast);
      this.items.set(seq, { key, el });
      return el;
    });
    render(
      this.listEl!,
      v.complete && seqs.length > 0 ? h("li", { class: "start" }, "Start of the conversation") : null,
      items,
    );
  }

  private messageItem(m: Message, receipts: boolean): HTMLElement {
    const sender = m.sender_id ? this.users.get(m.sender_id) : undefined;
    const isBot = Boolean(m.reply) || sender?.is_bot === true;
    const state = m.reply?.state;
    const body = m.deleted
      ? h("p", { class: "deleted" }, "This message was deleted.")
      : h(
          "div",
          { class: "body" },
          m.file && m.type === "image"
            ? h(
                "img",
                { src: this.api.fileUrl(m.file.url), alt: m.file.name, loading: "lazy", class: "image" },
              )
            : null,
          m.file && m.type !== "image"
            ? h(
                "a",
                { href: this.api.fileUrl(m.file.url), download: m.file.name, class: "file" },
                `📎 ${m.file.name} (${fmtBytes(m.file.size)})`,
              )
            : null,
          m.text
            ? h("p", { class: "text", "data-text-of": m.id }, this.withMentions(m.text))
            : state === "generating"
              ? h("p", { class: "text thinking", "data-text-of": m.id }, "Thinking…")
              : null,
        );
    return h(
      "li",
      {
        class: `message${m.sender_id === this.me.id ? " mine" : ""}${isBot ? " bot" : ""}`,
        "data-seq": m.seq,
        "data-id": m.id,
        "data-state": state,
      },
      h(
        "div",
        { class: "meta" },
        h("span", { class: "sender" }, sender?.nickname || m.sender_id || "System"),
        isBot ? h("span", { class: "tag" }, "bot") : null,
        h("time", { datetime: new Date(m.created_at).toISOString() }, fmtTime(m.created_at)),
        m.edited ? h("span", { class: "edited" }, "(edited)") : null,
      ),
      body,
      m.reply ? this.replyState(m) : null,
      receipts ? this.receipts(m) : null,
    );
  }

  private replyState(m: Message): HTMLElement | null {
    const r = m.reply!;
    if (r.state === "generating") {
      return h(
        "div",
        { class: "reply-state generating" },
        h("span", { class: "spinner", "aria-hidden": "true" }),
        h("span", { class: "label" }, m.text ? "Generating…" : "Thinking…"),
        h(
          "button",
          {
            type: "button",
            class: "stop",
            "aria-label": "Stop generating",
            onclick: async (ev: Event) => {
              (ev.currentTarget as HTMLButtonElement).disabled = true;
              try {
                await this.api.stopReply(m.id);
              } catch (e) {
                // Already finished: its final state is on its way.
                if (!(e instanceof ApiError && e.status === 409)) {
                  announce(this.els.status, `Cannot stop: ${errorText(e)}`, "error");
                }
              }
            },
          },
          "Stop",
        ),
      );
    }
    const label: Record<string, string> = {
      complete: "",
      stopped: "Stopped",
      failed: "Failed",
      interrupted: "Interrupted",
    };
    if (r.state === "complete") {
      // A reply cut at its length limit (output tokens or bytes) ends complete with the reason `length`.
      return r.reason === "length"
        ? h("div", { class: "reply-state complete length" }, "Cut at the length limit")
        : null;
    }
    return h(
      "div",
      { class: `reply-state ${r.state}`, role: r.state === "failed" ? "alert" : undefined },
      label[r.state],
      r.reason ? `: ${r.reason}` : "",
    );
  }

  /** The other people who have read up to `m`. */
  private readers(m: Message): string[] {
    return [...this.view!.members.values()]
      .filter((x) => x.id !== this.me.id && !x.is_bot && x.read_seq >= m.seq)
      .map((r) => r.nickname || r.id);
  }

  private receipts(m: Message): HTMLElement | null {
    const readers = this.readers(m);
    return readers.length === 0 ? null : h("p", { class: "receipts" }, `Seen by ${readers.join(", ")}`);
  }

  /** Text with `@id` mentions set apart. */
  private withMentions(text: string): (string | HTMLElement)[] {
    const out: (string | HTMLElement)[] = [];
    let last = 0;
    for (const match of text.matchAll(/@([A-Za-z0-9_.\-]+)/g)) {
      out.push(text.slice(last, match.index));
      out.push(h("span", { class: "mention" }, match[0]));
      last = match.index! + match[0].length;
    }
    out.push(text.slice(last));
    return out;
  }

  private scrollToBottom(): void {
    const el = this.messagesEl;
    if (el) el.scrollTop = el.scrollHeight;
  }

  private nearBottom(): boolean {
    const el = this.messagesEl;
    return !el || el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }

  private markRead(): void {
    const v = this.view;
    if (!v || document.visibilityState === "hidden") return;
    const last = Math.max(0, ...v.messages.keys());
    const ch = this.channels.get(v.channel.id);
    if (ch) {
      ch.unread_count = 0;
      ch.read_seq = last;
      this.renderChannels();
    }
    if (last > 0) this.socket.read(v.channel.id, last);
  }

  // ---- live traffic ----

  private listen(): void {
    const s = this.socket;
    s.on("state", (state) => {
      const text: Record<string, string> = {
        idle: "",
        connecting: "Connecting…",
        open: "Online",
        reconnecting: "Reconnecting…",
        closed: "Offline",
      };
      this.els.state.textContent = text[state];
      this.els.state.dataset.state = state;
    });
    s.on("message.new", (f) => {
      const m = f.message;
      const ch = this.channels.get(f.channel_id);
      if (ch) {
        ch.last_seq = f.seq;
        ch.last_message_at = m.created_at;
        const current = this.view?.channel.id === f.channel_id;
        if (!current && m.sender_id !== this.me.id) ch.unread_count = (ch.unread_count ?? 0) + 1;
        this.renderChannels();
      } else {
        void this.api.getChannel(f.channel_id).then((c) => this.upsertChannel(c));
      }
      if (this.view?.channel.id === f.channel_id) {
        const stick = this.nearBottom();
        this.view.messages.set(m.seq, m);
        if (m.sender_id) this.clearTyping(f.channel_id, m.sender_id);
        this.renderMessages();
        if (stick || m.sender_id === this.me.id) this.scrollToBottom();
        this.markRead();
      }
    });
    s.on("message.updated", (f) => this.replaceMessage(f.message));
    s.on("message.deleted", (f) => {
      const m = this.view?.channel.id === f.channel_id ? this.view.messages.get(f.seq) : undefined;
      if (m) this.replaceMessage({ ...m, deleted: true, text: "", file: undefined });
    });
    s.on("reply", (r) => {
      const v = this.view;
      if (!v || v.channel.id !== r.channel_id) return;
      const m = [...v.messages.values()].find((x) => x.id === r.message_id);
      if (!m) return;
      m.text = r.text;
      const stick = this.nearBottom();
      const textEl = this.messagesEl?.querySelector(`[data-text-of="${r.message_id}"]`);
      if (textEl && !textEl.classList.contains("thinking")) {
        render(textEl, ...this.withMentions(r.text));
      } else {
        this.renderMessages();
      }
      const label = this.messagesEl?.querySelector(`[data-id="${r.message_id}"] .reply-state .label`);
      if (label) label.textContent = "Generating…";
      if (stick) this.scrollToBottom();
    });
    s.on("reply.gap", async (g) => {
      try {
        this.socket.seedReply(await this.api.getMessage(g.message_id));
      } catch {
        /* the final message.updated carries the whole text */
      }
    });
    s.on("typing", (f) => {
      if (f.user_id === this.me.id) return;
      if (f.active) this.setTyping(f.channel_id, f.user_id);
      else this.clearTyping(f.channel_id, f.user_id);
    });
    s.on("read", (f) => {
      const v = this.view;
      if (!v || v.channel.id !== f.channel_id) return;
      const member = v.members.get(f.user_id);
      if (member) {
        member.read_seq = Math.max(member.read_seq, f.seq);
        this.renderMessages();
      }
    });
    s.on("presence", (f) => {
      const u = this.users.get(f.user_id);
      if (u) u.online = f.online;
    });
    s.on("channel.created", (f) => this.upsertChannel(f.channel));
    s.on("channel.updated", (f) => this.upsertChannel(f.channel));
    s.on("channel.members_joined", (f) => {
      this.upsertChannel(f.channel);
      if (this.view?.channel.id === f.channel.id) void this.refreshMembers();
    });
    s.on("channel.member_left", (f) => {
      if (f.user_id === this.me.id) {
        this.channels.delete(f.channel.id);
        this.renderChannels();
      } else {
        this.upsertChannel(f.channel);
        if (this.view?.channel.id === f.channel.id) void this.refreshMembers();
      }
    });
    s.on("channel.deleted", (f) => {
      this.channels.delete(f.channel_id);
      this.renderChannels();
    });
    s.on("resumed", () => {
      // Edits and deletions older than the resume point are read again from history.
      const v = this.view;
      if (v) void this.api.history(v.channel.id, { limit: PAGE }).then((page) => this.view === v && this.addMessages(page));
    });
    document.addEventListener("visibilitychange", () => this.markRead());
  }

  private async refreshMembers(): Promise<void> {
    const v = this.view!;
    v.members = new Map((await this.api.members(v.channel.id)).map((m) => [m.id, m] as const));
    for (const m of v.members.values()) this.users.set(m.id, m);
    this.composer?.setCandidates(this.mentionCandidates());
  }

  private replaceMessage(m: Message): void {
    const v = this.view;
    if (!v || v.channel.id !== m.channel_id || !v.messages.has(m.seq)) return;
    v.messages.set(m.seq, m);
    const stick = this.nearBottom();
    this.renderMessages();
    if (stick) this.scrollToBottom();
  }

  private setTyping(channelId: string, userId: string): void {
    let map = this.typing.get(channelId);
    if (!map) this.typing.set(channelId, (map = new Map()));
    clearTimeout(map.get(userId));
    map.set(
      userId,
      setTimeout(() => this.clearTyping(channelId, userId), TYPING_SHOWN_MS),
    );
    this.renderTyping();
  }

  private clearTyping(channelId: string, userId: string): void {
    const map = this.typing.get(channelId);
    if (!map?.has(userId)) return;
    clearTimeout(map.get(userId));
    map.delete(userId);
    this.renderTyping();
  }

  private renderTyping(): void {
    const v = this.view;
    if (!v || !this.typingEl) return;
    const who = [...(this.typing.get(v.channel.id)?.keys() ?? [])].map(
      (id) => this.users.get(id)?.nickname || id,
    );
    this.typingEl.textContent =
      who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
  }
}
