// Node.js talks to agents in other languages: node polyglot.mjs <data dir> <AMID>...
import { Agent } from "@agentmesh/sdk";

const [dataDir, ...peers] = process.argv.slice(2);
const me = await Agent.attach(dataDir); // the node running in dataDir
for (const peer of peers) {
  const receipt = await me.send(peer, { text: "hello from Node.js" });
  const reply = await me.request(peer, { text: "who are you?" }, { timeoutMs: 60_000 });
  console.log(`ok: ${receipt.path} ${peer} answered ${JSON.stringify(reply.payload)}`);
}
