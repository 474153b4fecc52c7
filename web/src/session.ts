// Where the signed-in session lives: this tab's sessionStorage (kept across reloads). The admin console
// hands a minted session to a new chat tab through localStorage, read once and removed.

const SESSION = "confab.session";
const HANDOFF = "confab.handoff";
const ADMIN = "confab.admin";

export interface Session {
  token: string;
  user_id: string;
}

export function loadSession(): Session | null {
  const handoff = localStorage.getItem(HANDOFF);
  if (handoff) {
    localStorage.removeItem(HANDOFF);
    sessionStorage.setItem(SESSION, handoff);
  }
  const raw = sessionStorage.getItem(SESSION);
  return raw ? (JSON.parse(raw) as Session) : null;
}

export function saveSession(s: Session): void {
  sessionStorage.setItem(SESSION, JSON.stringify(s));
}

export function clearSession(): void {
  sessionStorage.removeItem(SESSION);
}

/** Opens the chat in a new tab signed in as `s`. */
export function handOff(s: Session): void {
  localStorage.setItem(HANDOFF, JSON.stringify(s));
  window.open("/", "_blank", "noopener");
}

export function loadAdminToken(): string | null {
  return sessionStorage.getItem(ADMIN);
}

export function saveAdminToken(token: string | null): void {
  if (token) sessionStorage.setItem(ADMIN, token);
  else sessionStorage.removeItem(ADMIN);
}
