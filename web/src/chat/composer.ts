// The message box: Enter sends (Shift+Enter for a new line), typing indicators while writing, `@`
// autocomplete over the channel's members and the bots (arrow keys, Enter or Tab to pick, Escape to
// close), and file attachments.

import type { ConfabApi, ConfabSocket, User } from "@confab/client";

import { errorText, h, render } from "../dom.js";

const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;

export interface ComposerOptions {
  api: ConfabApi;
  socket: ConfabSocket;
  channelId: string;
  candidates: User[];
  onError: (text: string) => void;
  /** A mention is being typed: the candidates may be refreshed (new bots). */
  onMentionQuery?: () => void;
}

let instances = 0;

export class Composer {
  readonly element: HTMLFormElement;
  private readonly input: HTMLTextAreaElement;
  private readonly list: HTMLUListElement;
  private readonly file: HTMLInputElement;
  private candidates: User[];
  private matches: User[] = [];
  private active = 0;
  private querying = false;
  private typingSentAt = 0;
  private idleTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly opts: ComposerOptions) {
    const n = ++instances;
    this.candidates = opts.candidates;
    this.input = h("textarea", {
      id: `composer-${n}`,
      rows: 2,
      placeholder: "Write a message — @ to mention a bot",
      "aria-autocomplete": "list",
      "aria-controls": `mentions-${n}`,
      oninput: () => {
        this.onTyping();
        this.updateMentions();
      },
      onkeydown: (ev: KeyboardEvent) => this.onKey(ev),
      onblur: () => setTimeout(() => this.closeMentions(), 150),
    });
    this.list = h("ul", { id: `mentions-${n}`, class: "mentions", role: "listbox", hidden: true });
    this.file = h("input", {
      id: `file-${n}`,
      type: "file",
      class: "sr-only",
      onchange: () => void this.sendFile(),
    });
    this.element = h(
      "form",
      {
        class: "composer",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          void this.sendText();
        },
      },
      h("label", { for: `composer-${n}`, class: "sr-only" }, "Message"),
      this.list,
      this.input,
      h("label", { for: `file-${n}`, class: "attach", title: "Attach a file" }, "Attach"),
      this.file,
      h("button", { type: "submit", class: "primary" }, "Send"),
    );
  }

  focus(): void {
    this.input.focus();
  }

  setCandidates(users: User[]): void {
    this.candidates = users;
    if (this.query() !== null && document.activeElement === this.input) this.updateMentions();
  }

  private async sendText(): Promise<void> {
    const text = this.input.value.trim();
    if (!text) return;
    const mentions = this.candidates
      .filter((u) => new RegExp(`(^|\\W)@${escape(u.id)}(?![\\w-])`).test(text))
      .map((u) => u.id);
    this.input.value = "";
    this.stopTyping();
    try {
      await this.opts.socket.send(this.opts.channelId, { text, mentions });
    } catch (e) {
      this.input.value = text;
      this.opts.onError(`Not sent: ${errorText(e)}`);
    }
  }

  private async sendFile(): Promise<void> {
    const f = this.file.files?.[0];
    if (!f) return;
    try {
      const up = await this.opts.api.uploadFile(this.opts.channelId, f, f.name);
      const image = up.content_type.startsWith("image/");
      await this.opts.socket.send(this.opts.channelId, {
        message_type: image ? "image" : "file",
        file_id: up.id,
        text: this.input.value.trim(),
      });
      this.input.value = "";
    } catch (e) {
      this.opts.onError(`Upload failed: ${errorText(e)}`);
    } finally {
      this.file.value = "";
    }
  }

  // ---- typing ----

  private onTyping(): void {
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_REFRESH_MS) {
      this.typingSentAt = now;
      this.opts.socket.typing(this.opts.channelId, true);
    }
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  private stopTyping(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.typingSentAt) this.opts.socket.typing(this.opts.channelId, false);
    this.typingSentAt = 0;
  }

  // ---- mentions ----

  private query(): string | null {
    const before = this.input.value.slice(0, this.input.selectionStart ?? this.input.value.length);
    const m = /(^|\s)@([\w.-]*)$/.exec(before);
    return m ? m[2].toLowerCase() : null;
  }

  private updateMentions(): void {
    const q = this.query();
    if (q === null) {
      this.querying = false;
      return this.closeMentions();
    }
    if (!this.querying) {
      // A mention has just been started.
      this.querying = true;
      this.opts.onMentionQuery?.();
    }
    this.matches = this.candidates
      .filter((u) => u.id.toLowerCase().startsWith(q) || u.nickname.toLowerCase().startsWith(q))
      .sort((a, b) => Number(b.is_bot) - Number(a.is_bot) || a.id.localeCompare(b.id))
      .slice(0, 8);
    if (this.matches.length === 0) return this.closeMentions();
    this.active = Math.min(this.active, this.matches.length - 1);
    this.renderMentions();
  }

  private renderMentions(): void {
    const id = this.list.id;
    render(
      this.list,
      this.matches.map((u, i) =>
        h(
          "li",
          {
            id: `${id}-${i}`,
            role: "option",
            "aria-selected": i === this.active ? "true" : "false",
            "data-user": u.id,
            onmousedown: (ev: Event) => {
              ev.preventDefault();
              this.pick(u);
            },
          },
          h("strong", null, `@${u.id}`),
          u.nickname && u.nickname !== u.id ? ` ${u.nickname}` : "",
          u.is_bot ? h("span", { class: "tag" }, "bot") : null,
        ),
      ),
    );
    this.list.hidden = false;
    this.input.setAttribute("aria-activedescendant", `${id}-${this.active}`);
  }

  private closeMentions(): void {
    this.matches = [];
    this.active = 0;
    this.list.hidden = true;
    this.input.removeAttribute("aria-activedescendant");
  }

  private pick(u: User): void {
    const caret = this.input.selectionStart ?? this.input.value.length;
    const before = this.input.value.slice(0, caret).replace(/@([\w.-]*)$/, `@${u.id} `);
    this.input.value = before + this.input.value.slice(caret);
    this.input.setSelectionRange(before.length, before.length);
    this.closeMentions();
    this.input.focus();
  }

  private onKey(ev: KeyboardEvent): void {
    if (this.matches.length > 0) {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        const step = ev.key === "ArrowDown" ? 1 : -1;
        this.active = (this.active + step + this.matches.length) % this.matches.length;
        this.renderMentions();
        return;
      }
      if (ev.key === "Enter" || ev.key === "Tab") {
        ev.preventDefault();
        this.pick(this.matches[this.active]);
        return;
      }
      if (ev.key === "Escape") {
        ev.preventDefault();
        this.closeMentions();
        return;
      }
    }
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      void this.sendText();
    }
  }
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
