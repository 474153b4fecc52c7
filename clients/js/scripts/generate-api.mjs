// Generates src/generated/api.ts, the TypeScript types of the native API's OpenAPI document, with
// openapi-typescript. The hand-written types (src/types.ts, src/rest.ts) are checked against them by
// src/openapi-checks.ts whenever the client is type-checked.
//
//   node scripts/generate-api.mjs <openapi.json file or http(s) URL> [output, default src/generated/api.ts]
//
// `CONFAB_UPDATE_GENERATED=1 cargo test -p confab-webui --test client_js` runs this on the server's current
// document and writes the result; without the variable that test fails when the committed file differs.
//
// Types describe shapes, so one kind of request rule is left out before generating (the document keeps it and
// the server checks it): an object's `anyOf` of pure constraints on its own fields (which combinations a
// request needs: a bot's provider or callback URL, what a send or an edit must carry), which TypeScript would
// turn into loose unions. Objects without declared properties become `Record<string, unknown>`.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import openapiTS, { astToString } from "openapi-typescript";

const here = dirname(fileURLToPath(import.meta.url));
const [input, output = join(here, "..", "src", "generated", "api.ts")] = process.argv.slice(2);
if (!input) {
  console.error("usage: node scripts/generate-api.mjs <openapi.json or URL> [output.ts]");
  process.exit(2);
}

const doc = /^https?:\/\//.test(input)
  ? await (await fetch(input)).json()
  : JSON.parse(readFileSync(input, "utf8"));

/**
 * A schema that only constrains the object it sits in (whose property names are `own`): no type or reference
 * of its own, and properties only among the object's.
 */
function constraintOnly(s, own) {
  if (typeof s !== "object" || s === null) return false;
  if (["type", "$ref", "const", "enum", "items", "additionalProperties"].some((k) => k in s)) return false;
  return (
    Object.keys(s.properties ?? {}).every((name) => own.includes(name)) &&
    (s.anyOf ?? []).every((c) => constraintOnly(c, own))
  );
}

/** Drops the request rules of every object schema in place (see above). */
function shapesOnly(node) {
  if (Array.isArray(node)) {
    node.forEach(shapesOnly);
  } else if (typeof node === "object" && node !== null) {
    const own = Object.keys(node.properties ?? {});
    if (own.length && Array.isArray(node.anyOf) && node.anyOf.every((c) => constraintOnly(c, own))) {
      delete node.anyOf;
    }
    Object.values(node).forEach(shapesOnly);
  }
}
shapesOnly(doc);

const header = `// Generated from the native API's OpenAPI document (/api/v1/openapi.json) by openapi-typescript
// (clients/js/scripts/generate-api.mjs). Do not edit: regenerate with
// \`CONFAB_UPDATE_GENERATED=1 cargo test -p confab-webui --test client_js\` (docs/web.md).

`;
const ast = await openapiTS(doc, { silent: true, emptyObjectsUnknown: true });
mkdirSync(dirname(output), { recursive: true });
writeFileSync(output, header + astToString(ast));
