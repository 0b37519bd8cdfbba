// The README's TypeScript example (sending bytes), as it stands there: compiled with client.ts
// and run by tests/typescript_client.rs, which also checks the README still shows this call.
// Run: node out/readme.js BASE_URL TOPIC
import createClient from "openapi-fetch";
import type { paths } from "./tidelog.js";

const [baseUrl, topic] = process.argv.slice(2);
if (baseUrl === undefined || topic === undefined) {
  throw new Error("usage: node readme.js BASE_URL TOPIC");
}
const client = createClient<paths>({ baseUrl });

const sent =
  // README begin
  await client.POST("/v1/topics/{topic}/records", {params: {path: {topic}, query: {key: "k"}},
  headers: {"Content-Type": "application/octet-stream"}, body: new Uint8Array([0, 1, 255]),
  bodySerializer: (body) => body})
  // README end
  ;
// acks=all (the default): a 200 with offsets, never the 202 of acks=none.
if (sent.data === undefined || sent.data.durability === "none") {
  throw new Error(`the README's produce failed: ${JSON.stringify(sent.error)}`);
}
console.log(`readme: stored at offset ${sent.data.offsets[0]?.offset}`);
