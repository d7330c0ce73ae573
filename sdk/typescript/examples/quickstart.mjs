// A local network (bootstrap, relay, two agents as real processes); bob answers alice.
import { LocalMesh } from "@agentmesh/sdk";

const mesh = await LocalMesh.start({ n: 2 }); // temporary data dirs, all on loopback
const [alice, bob] = mesh.agents;
try {
  bob.onMessage(async (msg) => {
    if (msg.isRequest) await msg.reply({ text: `got ${msg.text}` }); // acknowledged once this resolves
  });
  const receipt = await alice.send(bob, { text: "hello" }); // KNOCK, then an encrypted session
  console.log(`delivered via ${receipt.path} (KNOCK: ${receipt.knocked})`);
  const reply = await alice.request(bob, "ping");
  console.log("ok:", reply.payload); // { text: 'got ping' }
} finally {
  await mesh.stop();
}
