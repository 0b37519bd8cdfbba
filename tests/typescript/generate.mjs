// Types for client.ts from openapi/tidelog.json, with openapi-typescript's Node API:
//   node generate.mjs SPEC OUT.d.ts
// Two documented transforms: a binary body (`format: binary`) is bytes a fetch body takes
// (Blob | Uint8Array) rather than a string that openapi-fetch would JSON-encode, and a schema
// that matches nothing (`not: {}`, a property that must be absent) is `never`, so passing
// such a property does not compile.
import { readFileSync, writeFileSync } from "node:fs";
import openapiTS, { astToString } from "openapi-typescript";
import ts from "typescript";

const [spec, out] = process.argv.slice(2);
if (!spec || !out) {
  throw new Error("usage: node generate.mjs SPEC OUT.d.ts");
}
const bytes = ts.factory.createUnionTypeNode([
  ts.factory.createTypeReferenceNode("Blob"),
  ts.factory.createTypeReferenceNode("Uint8Array"),
]);
const never = ts.factory.createKeywordTypeNode(ts.SyntaxKind.NeverKeyword);
const matchesNothing = (schema) =>
  Object.keys(schema).length === 1 &&
  typeof schema.not === "object" &&
  Object.keys(schema.not).length === 0;

const ast = await openapiTS(JSON.parse(readFileSync(spec, "utf8")), {
  transform(schema) {
    if (schema.format === "binary") return bytes;
    if (matchesNothing(schema)) return never;
    return undefined;
  },
});
writeFileSync(out, astToString(ast));
