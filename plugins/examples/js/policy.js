// Canary routing: requests with `X-Canary: 1` go to the backends named
// `canary-*`, all others round-robin over the rest.
import { Counter } from "switchyard:policy/host@0.1.0";

// Per instance; rebuilt by `configure` in every new instance.
let canary = [];
// Shared by every instance: round-robin positions for each side.
const turn = {};

export const selector = {
  configure(config, backends) {
    for (const [key] of config) {
      throw `policy-config.${key}: this policy takes no keys`;
    }
    canary = backends.map((b) => b.name.startsWith("canary-"));
    if (!canary.includes(true)) {
      throw "no backend is named canary-*";
    }
    turn[true] = new Counter("canary");
    turn[false] = new Counter("stable");
  },

  select(req, backends) {
    const want = req.header("x-canary") === "1";
    const eligible = [];
    backends.forEach((b, i) => {
      if (b.healthy && canary[i] === want) eligible.push(i);
    });
    if (eligible.length === 0) {
      throw "no healthy backend in this group";
    }
    const n = turn[want].fetchAdd(1n);
    return { backend: eligible[Number(n % BigInt(eligible.length))] };
  },
};
