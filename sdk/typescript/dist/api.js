/**
 * Types of the local API's routes, derived from the generated OpenAPI
 * types: the body, query and answer of each route and method.
 *
 * @module
 */
export {};
//# sourceMappingURL=api.js.map