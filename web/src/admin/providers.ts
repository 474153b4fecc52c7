import { h, render } from "../dom.js";
import { field, table, type TabContext } from "./ui.js";

const KINDS = ["openai_compatible", "openai", "azure", "anthropic"];

export async function providersTab(ctx: TabContext): Promise<void> {
  const providers = await ctx.api.listProviders();
  const [nameLabel, name] = field("provider-name", "Name", { required: true });
  const [urlLabel, url] = field("provider-url", "Base URL", { type: "url", placeholder: "https://…/v1" });
  const [modelLabel, model] = field("provider-model", "Model");
  const [keyLabel, keyEnv] = field("provider-key-env", "API key variable (the key stays in the server's environment)", {
    placeholder: "CONFAB_PROVIDER_KEY_OPENAI",
    "aria-describedby": "provider-key-env-hint",
  });
  const keyHint = h(
    "p",
    { id: "provider-key-env-hint", class: "hint" },
    "The key variable's name must start with CONFAB_PROVIDER_KEY_ unless the operator allows others " +
      "([provider_api] in the server's configuration); the server refuses any other name.",
  );
  const kind = h(
    "select",
    { id: "provider-kind", name: "kind" },
    KINDS.map((k) => h("option", { value: k }, k)),
  );
  render(
    ctx.panel,
    h("h2", null, "Providers"),
    h(
      "p",
      { class: "hint" },
      "Keys are never shown or sent here: a provider names the environment variable that holds its key.",
    ),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: (ev: Event) => {
          ev.preventDefault();
          const body: Record<string, unknown> = { name: name.value.trim(), kind: kind.value };
          if (url.value.trim()) body.base_url = url.value.trim();
          if (model.value.trim()) body.model = model.value.trim();
          if (keyEnv.value.trim()) body.api_key_env = keyEnv.value.trim();
          void ctx.act(`Add provider ${body.name}`, () => ctx.api.addProvider(body));
        },
      },
      nameLabel,
      name,
      h("label", { for: "provider-kind" }, "Kind"),
      kind,
      urlLabel,
      url,
      modelLabel,
      model,
      keyLabel,
      keyEnv,
      keyHint,
      h("button", { type: "submit", class: "primary" }, "Add provider"),
    ),
    table(
      `${providers.length} providers`,
      ["Name", "Kind", "Base URL", "Model", "Key variable", "Key set", "Source", "Actions"],
      providers.map((p) => [
        p.name,
        p.kind,
        String(p.base_url ?? ""),
        String(p.model ?? p.model_path ?? ""),
        String(p.api_key_env ?? ""),
        p.api_key_set ? "yes" : "no",
        p.source,
        p.source === "admin_api"
          ? h(
              "button",
              {
                type: "button",
                class: "danger",
                onclick: () => void ctx.act(`Delete provider ${p.name}`, () => ctx.api.deleteProvider(p.name)),
              },
              "Delete",
            )
          : null,
      ]),
    ),
  );
}
