// What the admin console's tabs share: the context a tab renders with, and the table and field helpers.
// Its own module so that app.ts (which imports every tab) and the tabs (which use these) import no cycle.

import type { ConfabApi } from "@confab/client";

import { h } from "../dom.js";

export interface TabContext {
  api: ConfabApi;
  panel: HTMLElement;
  /** Reports an outcome in the console's status line. */
  say: (text: string, kind?: "info" | "error") => void;
  /** Runs an action, reporting a failure; re-renders the tab after it unless told not to. */
  act: (what: string, f: () => Promise<unknown>, rerender?: boolean) => Promise<void>;
}

/** A table with a header row; `rows` are cells. */
export function table(caption: string, head: string[], rows: (Node | string | number | null)[][]): HTMLElement {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      null,
      h("caption", null, caption),
      h("thead", null, h("tr", null, head.map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        null,
        rows.length === 0
          ? h("tr", null, h("td", { colspan: head.length, class: "empty" }, "Nothing yet."))
          : rows.map((r) => h("tr", null, r.map((c) => h("td", null, c ?? "")))),
      ),
    ),
  );
}

/** A labelled input: returns [label, input]. */
export function field(
  id: string,
  label: string,
  attrs: Record<string, unknown> = {},
): [HTMLLabelElement, HTMLInputElement] {
  return [h("label", { for: id }, label), h("input", { id, name: id, ...attrs })];
}
