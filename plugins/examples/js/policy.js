// Canary routing: requests with `X-Canary: 1` go to the backends named
// `canary-*`, all others round-robin over the rest.
import { header } from "switchyard:policy/request@0.2.0";
import { counter, counterAdd } from "switchyard:policy/host@0.2.0";

// Per instance; rebuilt by `configure` in every new instance.
let canary = [];
// The backends' health as last given to `select` (it sends none when
// nothing changed).
let health = [];
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
    turn[true] = counter("canary");
    turn[false] = counter("stable");
  },

  select(changed) {
    if (changed !== undefined && changed !== null) health = changed;
    const want = header("x-canary") === "1";
    const eligible = [];
    health.forEach((b, i) => {
      if (b.healthy && canary[i] === want) eligible.push(i);
    });
    if (eligible.length === 0) {
      throw "no healthy backend in this group";
    }
    const n = counterAdd(turn[want], 1n);
    return eligible[Number(n % BigInt(eligible.length))];
  },
};
