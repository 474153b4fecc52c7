// Entry point: `/admin` is the admin console, everything else the chat.

import "./styles.css";

import { startAdmin } from "./admin/app.js";
import { ChatApp } from "./chat/app.js";
import { signIn } from "./chat/signin.js";
import { errorText, h, render } from "./dom.js";
import { loadSession, type Session } from "./session.js";

const root = document.getElementById("app")!;

async function main(): Promise<void> {
  if (location.pathname.startsWith("/admin")) {
    document.title = "Confab admin";
    await startAdmin(root);
    return;
  }
  const start = (s: Session) => new ChatApp(root, s).start();
  const session = loadSession();
  if (session) await start(session);
  else await signIn(root, (s) => void start(s));
}

main().catch((e) => {
  console.error(e);
  render(root, h("p", { class: "error", role: "alert" }, `Something went wrong: ${errorText(e)}`));
});
