// Builds policy.js into policy.wasm with componentize-js. Every WASI feature
// is disabled: the policy gets no clock, random, stdio or network from the
// JavaScript runtime (fetch is not there at all).
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const { component } = await componentize({
  sourcePath: "policy.js",
  witPath: "wit",
  worldName: "policy",
  disableFeatures: ["stdio", "random", "clocks", "http", "fetch-event"],
});
await writeFile("policy.wasm", component);
