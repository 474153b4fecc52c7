// Sign-in: a development login by user id when the server runs with `--dev-login`, or a session token
// minted by the application (the admin console's "Open chat as").

import { ConfabApi } from "@confab/client";

import { announce, errorText, h, render } from "../dom.js";
import { saveSession, type Session } from "../session.js";

export async function signIn(root: HTMLElement, onDone: (s: Session) => void): Promise<void> {
  const status = h("p", { role: "status", class: "status" });
  let devLogin = false;
  try {
    const r = await fetch("/api/v1/dev/login");
    devLogin = r.ok && ((await r.json()) as { enabled?: boolean }).enabled === true;
  } catch {
    devLogin = false;
  }

  const userInput = h("input", { id: "signin-user", name: "user_id", required: true, autocomplete: "username" });
  const nickInput = h("input", { id: "signin-nick", name: "nickname", autocomplete: "nickname" });
  const devForm = h(
    "form",
    {
      class: "card",
      "aria-labelledby": "dev-title",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        try {
          const r = await fetch("/api/v1/dev/login", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ user_id: userInput.value.trim(), nickname: nickInput.value.trim() || undefined }),
          });
          const body = (await r.json()) as { token?: string; user_id?: string; error?: { message: string } };
          if (!r.ok || !body.token) throw new Error(body.error?.message ?? `HTTP ${r.status}`);
          const s = { token: body.token, user_id: body.user_id! };
          saveSession(s);
          onDone(s);
        } catch (e) {
          announce(status, `Sign-in failed: ${errorText(e)}`, "error");
        }
      },
    },
    h("h2", { id: "dev-title" }, "Sign in (development)"),
    h("p", { class: "hint" }, "The server runs with --dev-login: any user id signs in, and is created if new."),
    h("label", { for: "signin-user" }, "User id"),
    userInput,
    h("label", { for: "signin-nick" }, "Nickname (optional)"),
    nickInput,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );

  const tokenInput = h("input", { id: "signin-token", name: "token", required: true, autocomplete: "off" });
  const tokenForm = h(
    "form",
    {
      class: "card",
      "aria-labelledby": "token-title",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        const token = tokenInput.value.trim();
        try {
          const me = await new ConfabApi({ token }).me();
          const s = { token, user_id: me.id };
          saveSession(s);
          onDone(s);
        } catch (e) {
          announce(status, `That token does not sign in: ${errorText(e)}`, "error");
        }
      },
    },
    h("h2", { id: "token-title" }, "Sign in with a session token"),
    h(
      "p",
      { class: "hint" },
      "Session tokens come from the application (POST /api/v1/users/{id}/sessions) or from the ",
      h("a", { href: "/admin" }, "admin console"),
      "'s “Open chat as”.",
    ),
    h("label", { for: "signin-token" }, "Session token"),
    tokenInput,
    h("button", { type: "submit" }, "Sign in with the token"),
  );

  render(
    root,
    h(
      "main",
      { class: "signin" },
      h("h1", null, "Confab"),
      devLogin ? devForm : null,
      tokenForm,
      status,
    ),
  );
  (devLogin ? userInput : tokenInput).focus();
}
