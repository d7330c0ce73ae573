export * from "./errors.js";
export * from "./models.js";
export * from "./client.js";
export type * from "./api.js";
export type { paths, components, operations } from "./generated/openapi.js";
export { VERSION } from "./version.js";
export * from "./process.js";
export * from "./agent.js";
export * from "./mesh.js";
