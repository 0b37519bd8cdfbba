// Lints the spec with Redocly's engine (the rules of `redocly lint`), offline:
//   node lint.mjs SPEC
// Its `recommended` rule set, with each rule turned off saying why. Prints every problem and
// exits non-zero if there is any, warnings included.
import { createConfig, lint } from "@redocly/openapi-core";

const [spec] = process.argv.slice(2);
if (!spec) {
  throw new Error("usage: node lint.mjs SPEC");
}
const config = await createConfig({
  extends: ["recommended"],
  rules: {
    // GET /v1/topics, /v1/groups, /v1/cluster, /healthz, /readyz, /metrics and /openapi.json
    // take no parameters and no body: no 4xx is theirs alone. Their `default` problem response
    // covers what every route may answer (404 `not_found`, 405 `method_not_allowed`).
    "operation-4xx-response": "off",
  },
});
const problems = await lint({ ref: spec, config });
for (const p of problems) {
  const at = p.location?.[0]?.pointer ?? "";
  console.log(`${p.severity} ${p.ruleId}: ${p.message} at ${at}`);
}
console.log(`redocly lint (recommended): ${problems.length} problems`);
process.exit(problems.length === 0 ? 0 : 1);
