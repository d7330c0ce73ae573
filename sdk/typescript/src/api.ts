/**
 * Types of the local API's routes, derived from the generated OpenAPI
 * types: the body, query and answer of each route and method.
 *
 * @module
 */

import type { paths } from "./generated/openapi.js";

/** Every route of the local API (`"/v1/send"`, `"/v1/lookup/{amid}"`, …). */
export type ApiPath = keyof paths;

/** The HTTP methods the local API uses. */
export type ApiMethod = "get" | "post" | "put" | "delete";

/** The methods a route takes. */
export type MethodOf<P extends ApiPath> = {
  [M in ApiMethod]: paths[P][M] extends { responses: unknown } ? M : never;
}[ApiMethod];

/** The operation of a route and method. */
export type Operation<P extends ApiPath, M extends MethodOf<P>> = paths[P][M];

/** The JSON body a route takes (`undefined` when it takes none). */
export type ApiBody<P extends ApiPath, M extends MethodOf<P>> =
  Operation<P, M> extends { requestBody?: never }
    ? undefined
    : Operation<P, M> extends { requestBody: { content: { "application/json": infer B } } }
    ? B
      : Operation<P, M> extends { requestBody?: { content: { "application/json": infer B } } }
        ? B | undefined
        : undefined;

/** The query parameters a route takes. */
export type ApiQuery<P extends ApiPath, M extends MethodOf<P>> =
  Operation<P, M> extends { parameters: { query?: infer Q } }
    ? [Q] extends [never]
      ? undefined
      : Q
    : undefined;

/** The path parameters a route takes (`{amid}`, `{name}`). */
export type ApiPathParams<P extends ApiPath, M extends MethodOf<P>> =
  Operation<P, M> extends { parameters: { path: infer Q } }
    ? [Q] extends [never]
      ? undefined
      : Q
    : undefined;

/** The JSON answer of a route (status 200). */
export type ApiAnswer<P extends ApiPath, M extends MethodOf<P>> =
  Operation<P, M> extends { responses: { 200: { content: { "application/json": infer A } } } }
    ? A
    : unknown;
